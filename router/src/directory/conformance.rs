//! Conformance suite every [`Directory`] backend must pass.
//!
//! Each check takes an `open` function that opens the backend over one
//! storage: the first call sees empty storage, and a later call (after the
//! previous directory was dropped) must see everything committed before, as
//! a restarted process would. A test runs each of [`CHECKS`] over fresh
//! storage, e.g. `router/tests/directory_conformance.rs` for redb.
//!
//! Checks panic on failure (they are test code); the module is public so the
//! tests of every backend (in any crate) can run it, and `#[doc(hidden)]`.

use std::collections::{BTreeMap, BTreeSet};

use super::types::{
    CompanionRequest, DamagedBlockRequest, DamagedNeedle, EndRequest, JobBlock, LogicalVolume,
    MigrationStep, NodeRecord, NodeRegistration, NodeRole, NodeState, PlaceRequest,
    RebuildClaimRequest, RebuiltBlockRequest, RenewRequest, ReplaceHolderRequest, StepRequest,
    VOLUME_PAGE_MAX, VolumeClaim, VolumeState,
};
use super::{Directory, DirectoryError, FIRST_KEY, REPLICA_COUNT};

/// Opens the backend under test over the storage of one check.
pub type Open<'a> = &'a dyn Fn() -> Box<dyn Directory>;

/// One conformance check.
pub type Check = fn(Open<'_>);

/// Every check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("register_and_heartbeat", register_and_heartbeat),
    (
        "allocation_spreads_over_racks",
        allocation_spreads_over_racks,
    ),
    ("allocation_needs_three_racks", allocation_needs_three_racks),
    (
        "down_nodes_make_volumes_readonly",
        down_nodes_make_volumes_readonly,
    ),
    ("state_transitions", state_transitions),
    ("stale_replicas", stale_replicas),
    ("leases_increase", leases_increase),
    ("volume_sizes", volume_sizes),
    ("state_survives_reopen", state_survives_reopen),
    ("discard_failed_allocation", discard_failed_allocation),
    ("volume_pages", volume_pages),
    ("damaged_needles", damaged_needles),
    ("warm_seal_attempts", warm_seal_attempts),
    ("warm_placement", warm_placement),
    ("warm_holders_and_blocks", warm_holders_and_blocks),
    ("warm_rebuilds", warm_rebuilds),
    ("rebuild_jobs", rebuild_jobs),
    ("migration_claims", migration_claims),
    ("volume_ownership", volume_ownership),
    ("geo_companions", geo_companions),
    ("node_removal", node_removal),
];

/// Runs every check, each over the storage that `fresh` prepares: `fresh()`
/// returns an `open` function over new, empty storage.
pub fn run_all(fresh: &dyn Fn() -> Box<dyn Fn() -> Box<dyn Directory>>) {
    for (name, check) in CHECKS {
        tracing::info!(check = name, "directory conformance");
        let open = fresh();
        check(&*open);
    }
}

/// A registration of a node with role `role` in rack `rack`.
pub fn registration(id: &str, role: NodeRole, rack: &str) -> NodeRegistration {
    NodeRegistration {
        id: id.to_owned(),
        role,
        rack: rack.to_owned(),
        datacenter: "dc1".to_owned(),
        address: format!("{id}.test:7000"),
    }
}

/// Registers store nodes `(id, rack)` at `now_ms`.
pub fn register_stores(dir: &dyn Directory, stores: &[(&str, &str)], now_ms: u64) {
    for (id, rack) in stores {
        dir.register_node(registration(id, NodeRole::Store, rack), now_ms)
            .expect("register store");
    }
}

fn racks_of(nodes: &[NodeRecord], replicas: &[String]) -> BTreeSet<String> {
    replicas
        .iter()
        .map(|r| {
            let node = nodes
                .iter()
                .find(|n| &n.id == r)
                .expect("replica is a node");
            node.rack.clone()
        })
        .collect()
}

/// Registration, heartbeats, re-registration and id validation.
pub fn register_and_heartbeat(open: Open<'_>) {
    let dir = open();
    let node = dir
        .register_node(registration("store-2", NodeRole::Store, "r1"), 100)
        .expect("register");
    assert_eq!(node.state, NodeState::Up);
    assert_eq!(node.last_heartbeat_ms, 100);
    dir.register_node(registration("router-1", NodeRole::Router, "r1"), 100)
        .expect("register");
    let ids: Vec<String> = dir
        .list_nodes()
        .expect("list")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["router-1", "store-2"], "nodes are ordered by id");

    let beat = dir.heartbeat("store-2", 250).expect("heartbeat");
    assert_eq!(beat.last_heartbeat_ms, 250);
    let late = dir
        .heartbeat("store-2", 200)
        .expect("out-of-order heartbeat");
    assert_eq!(
        late.last_heartbeat_ms, 250,
        "a heartbeat never moves time back"
    );
    assert!(matches!(
        dir.heartbeat("nobody", 300),
        Err(DirectoryError::UnknownNode { .. })
    ));

    let mut moved = registration("store-2", NodeRole::Store, "r9");
    moved.address = "10.0.0.9:7000".into();
    let again = dir.register_node(moved, 400).expect("re-register");
    assert_eq!(
        (again.rack.as_str(), again.address.as_str()),
        ("r9", "10.0.0.9:7000")
    );
    assert_eq!(dir.list_nodes().expect("list").len(), 2);

    for bad in ["", "a/b", "a b", &"x".repeat(200)] {
        let result = dir.register_node(registration(bad, NodeRole::Store, "r1"), 1);
        assert!(
            matches!(result, Err(DirectoryError::BadRequest(_))),
            "id {bad:?}"
        );
    }
}

/// Replicas land on three racks, spread evenly, only on up store nodes.
pub fn allocation_spreads_over_racks(open: Open<'_>) {
    let dir = open();
    register_stores(
        &*dir,
        &[
            ("s1", "r1"),
            ("s2", "r1"),
            ("s3", "r2"),
            ("s4", "r3"),
            ("s5", "r4"),
        ],
        0,
    );
    dir.register_node(registration("f4-1", NodeRole::F4Storage, "r5"), 0)
        .expect("register");
    dir.register_node(registration("f4-2", NodeRole::F4Storage, "r6"), 0)
        .expect("register");
    let nodes = dir.list_nodes().expect("list");
    let mut ids = Vec::new();
    for _ in 0..8 {
        let volume = dir.allocate_volume(10).expect("allocate");
        assert_eq!(volume.state, VolumeState::Writable);
        assert_eq!(volume.replicas.len(), REPLICA_COUNT);
        assert!(volume.stale_replicas.is_empty());
        assert_eq!(racks_of(&nodes, &volume.replicas).len(), REPLICA_COUNT);
        assert!(
            volume.replicas.iter().all(|r| r.starts_with('s')),
            "store nodes only"
        );
        assert_eq!((volume.created_ms, volume.locked_ms), (10, None));
        ids.push(volume.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for volume in dir.list_volumes().expect("list") {
        for r in volume.replicas {
            *per_node.entry(r).or_default() += 1;
        }
    }
    // 24 replicas over 5 nodes in 4 racks: every node carries some, none
    // more than its fair share plus one.
    assert_eq!(per_node.len(), 5, "{per_node:?}");
    assert!(
        per_node.values().all(|&n| (4..=6).contains(&n)),
        "{per_node:?}"
    );
    assert_eq!(dir.volume(ids[0]).expect("get").id, ids[0]);
    assert!(matches!(
        dir.volume(9999),
        Err(DirectoryError::UnknownVolume { id: 9999 })
    ));
}

/// Fewer than three racks with an up store node: a clean typed error and
/// nothing allocated.
pub fn allocation_needs_three_racks(open: Open<'_>) {
    let dir = open();
    register_stores(
        &*dir,
        &[("s1", "r1"), ("s2", "r1"), ("s3", "r2"), ("s4", "r3")],
        0,
    );
    // s4 (the only store in r3) goes silent and is marked down.
    for id in ["s1", "s2", "s3"] {
        dir.heartbeat(id, 5_000).expect("heartbeat");
    }
    dir.mark_down_expired(5_000, 1_000).expect("mark down");
    match dir.allocate_volume(5_000) {
        Err(DirectoryError::NotEnoughRacks {
            needed: 3,
            available: 2,
        }) => {}
        other => panic!("expected NotEnoughRacks, got {other:?}"),
    }
    assert!(dir.list_volumes().expect("list").is_empty());
    dir.heartbeat("s4", 6_000).expect("heartbeat");
    let volume = dir
        .allocate_volume(6_000)
        .expect("allocate with three racks");
    assert_eq!(volume.id, 1, "a refused allocation consumes no id");
}

/// A silent node is marked down; its replicas turn stale and their writable
/// volumes readonly; it comes back up stale.
pub fn down_nodes_make_volumes_readonly(open: Open<'_>) {
    let dir = open();
    register_stores(
        &*dir,
        &[("s1", "r1"), ("s2", "r2"), ("s3", "r3"), ("s4", "r4")],
        0,
    );
    let volumes: Vec<_> = (0..4)
        .map(|_| dir.allocate_volume(0).expect("allocate"))
        .collect();
    let locked = volumes[0].id;
    dir.set_volume_state(locked, VolumeState::Locked, 1)
        .expect("lock");
    for id in ["s1", "s2", "s3"] {
        dir.heartbeat(id, 900).expect("heartbeat");
    }
    assert!(
        dir.mark_down_expired(1_000, 1_000)
            .expect("mark")
            .is_empty(),
        "not yet"
    );
    let changed = dir.mark_down_expired(1_001, 1_000).expect("mark");
    let with_s4: BTreeSet<u32> = volumes
        .iter()
        .filter(|v| v.replicas.iter().any(|r| r == "s4"))
        .map(|v| v.id)
        .collect();
    assert_eq!(
        changed.iter().map(|v| v.id).collect::<BTreeSet<_>>(),
        with_s4
    );
    for volume in dir.list_volumes().expect("list") {
        if with_s4.contains(&volume.id) {
            assert_eq!(volume.stale_replicas, ["s4"]);
            let expected = if volume.id == locked {
                VolumeState::Locked
            } else {
                VolumeState::ReadOnly
            };
            assert_eq!(volume.state, expected, "volume {}", volume.id);
        } else {
            assert!(volume.stale_replicas.is_empty());
            let expected = if volume.id == locked {
                VolumeState::Locked
            } else {
                VolumeState::Writable
            };
            assert_eq!(volume.state, expected);
        }
    }
    let s4 = dir
        .list_nodes()
        .expect("list")
        .into_iter()
        .find(|n| n.id == "s4");
    assert_eq!(s4.map(|n| n.state), Some(NodeState::Down));
    assert!(
        dir.mark_down_expired(1_002, 1_000)
            .expect("mark")
            .is_empty(),
        "idempotent"
    );

    let back = dir.heartbeat("s4", 1_500).expect("heartbeat");
    assert_eq!(back.state, NodeState::Up);
    let Some(&vid) = with_s4.iter().find(|&&v| v != locked) else {
        return;
    };
    assert!(
        dir.volume(vid).expect("get").is_stale("s4"),
        "stays stale when up"
    );
    assert!(matches!(
        dir.set_volume_state(vid, VolumeState::Writable, 1_500),
        Err(DirectoryError::InvalidTransition { .. })
    ));
    let epoch = dir.volume(vid).expect("get").repair_epoch;
    dir.clear_replica_stale(vid, "s4", epoch).expect("clear");
    let writable = dir
        .set_volume_state(vid, VolumeState::Writable, 1_500)
        .expect("writable once in sync");
    assert_eq!(writable.state, VolumeState::Writable);
}

/// `locked` is final and timestamped; `writable` needs healthy replicas.
pub fn state_transitions(open: Open<'_>) {
    let dir = open();
    register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    let vid = dir.allocate_volume(0).expect("allocate").id;
    let readonly = dir
        .set_volume_state(vid, VolumeState::ReadOnly, 1)
        .expect("readonly");
    assert_eq!(readonly.state, VolumeState::ReadOnly);
    let writable = dir
        .set_volume_state(vid, VolumeState::Writable, 2)
        .expect("writable");
    assert_eq!(writable.state, VolumeState::Writable);
    let locked = dir
        .set_volume_state(vid, VolumeState::Locked, 3)
        .expect("lock");
    assert_eq!(
        (locked.state, locked.locked_ms),
        (VolumeState::Locked, Some(3))
    );
    let again = dir
        .set_volume_state(vid, VolumeState::Locked, 4)
        .expect("re-lock");
    assert_eq!(
        again.locked_ms,
        Some(3),
        "re-locking keeps the first lock time"
    );
    for to in [VolumeState::Writable, VolumeState::ReadOnly] {
        assert!(matches!(
            dir.set_volume_state(vid, to, 5),
            Err(DirectoryError::InvalidTransition {
                from: VolumeState::Locked,
                ..
            })
        ));
    }
    assert!(matches!(
        dir.set_volume_state(77, VolumeState::ReadOnly, 5),
        Err(DirectoryError::UnknownVolume { id: 77 })
    ));

    // writable is refused while a replica's node is down.
    let other = dir.allocate_volume(10).expect("allocate").id;
    dir.set_volume_state(other, VolumeState::ReadOnly, 11)
        .expect("readonly");
    dir.heartbeat("s1", 2_000).expect("heartbeat");
    dir.heartbeat("s2", 2_000).expect("heartbeat");
    dir.mark_down_expired(2_000, 1_000).expect("mark");
    dir.heartbeat("s3", 2_001).expect("s3 back");
    let epoch = dir.volume(other).expect("get").repair_epoch;
    dir.clear_replica_stale(other, "s3", epoch).expect("clear");
    dir.register_node(registration("s1", NodeRole::Store, "r1"), 2_002)
        .expect("re-register");
    let ok = dir.set_volume_state(other, VolumeState::Writable, 2_003);
    assert_eq!(ok.expect("all up, none stale").state, VolumeState::Writable);
}

/// Reported replicas turn stale; a writable volume turns readonly.
pub fn stale_replicas(open: Open<'_>) {
    let dir = open();
    register_stores(
        &*dir,
        &[("s1", "r1"), ("s2", "r2"), ("s3", "r3"), ("s4", "r4")],
        0,
    );
    let volume = dir.allocate_volume(0).expect("allocate");
    let (vid, replica) = (volume.id, volume.replicas[1].clone());
    let stale = dir.mark_replica_stale(vid, &replica, false).expect("stale");
    assert_eq!(stale.state, VolumeState::ReadOnly);
    assert_eq!(stale.stale_replicas, std::slice::from_ref(&replica));
    assert!(stale.missed_deletes.is_empty());
    let twice = dir
        .mark_replica_stale(vid, &replica, false)
        .expect("stale again");
    assert_eq!(
        twice.stale_replicas, stale.stale_replicas,
        "idempotent marks"
    );
    assert!(
        twice.repair_epoch > stale.repair_epoch,
        "every report moves the epoch"
    );
    let outsider = ["s1", "s2", "s3", "s4"]
        .into_iter()
        .find(|n| !volume.replicas.iter().any(|r| r == n))
        .expect("four stores, three replicas");
    assert!(matches!(
        dir.mark_replica_stale(vid, outsider, false),
        Err(DirectoryError::NotAReplica { .. })
    ));
    assert!(matches!(
        dir.mark_replica_stale(999, &replica, false),
        Err(DirectoryError::UnknownVolume { .. })
    ));
    // A resync that started before the last report clears nothing.
    let missed = dir.mark_replica_stale(vid, &replica, true).expect("missed");
    assert_eq!(missed.missed_deletes, std::slice::from_ref(&replica));
    let kept = dir
        .clear_replica_stale(vid, &replica, twice.repair_epoch)
        .expect("clear with an old epoch");
    assert_eq!(kept.stale_replicas, std::slice::from_ref(&replica));
    assert_eq!(kept.missed_deletes, std::slice::from_ref(&replica));
    let cleared = dir
        .clear_replica_stale(vid, &replica, missed.repair_epoch)
        .expect("clear");
    assert!(cleared.stale_replicas.is_empty() && cleared.missed_deletes.is_empty());
    assert_eq!(
        cleared.state,
        VolumeState::ReadOnly,
        "clearing does not re-open uploads"
    );
    let locked = dir
        .set_volume_state(vid, VolumeState::Locked, 1)
        .expect("lock");
    let stale_locked = dir.mark_replica_stale(vid, &replica, false).expect("stale");
    assert_eq!(
        stale_locked.state,
        VolumeState::Locked,
        "locked stays locked"
    );
    assert_eq!(stale_locked.locked_ms, locked.locked_ms);
}

/// Leases are half-open, start at [`FIRST_KEY`], strictly increase per
/// volume, and are refused for bad counts and non-writable volumes.
pub fn leases_increase(open: Open<'_>) {
    let dir = open();
    register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    let a = dir.allocate_volume(0).expect("allocate").id;
    let b = dir.allocate_volume(0).expect("allocate").id;
    let first = dir.lease_keys(a, 10).expect("lease");
    assert_eq!((first.start, first.end), (FIRST_KEY, FIRST_KEY + 10));
    let second = dir.lease_keys(a, 1).expect("lease");
    assert_eq!((second.start, second.end), (first.end, first.end + 1));
    let other = dir.lease_keys(b, 5).expect("lease");
    assert_eq!(other.start, FIRST_KEY, "volumes lease independently");
    assert!(matches!(
        dir.lease_keys(a, 0),
        Err(DirectoryError::BadRequest(_))
    ));
    assert!(matches!(
        dir.lease_keys(a, u64::MAX),
        Err(DirectoryError::BadRequest(_))
    ));
    assert!(matches!(
        dir.lease_keys(42, 1),
        Err(DirectoryError::UnknownVolume { id: 42 })
    ));
    dir.set_volume_state(a, VolumeState::ReadOnly, 1)
        .expect("readonly");
    assert!(matches!(
        dir.lease_keys(a, 1),
        Err(DirectoryError::NotWritable { .. })
    ));
    dir.set_volume_state(a, VolumeState::Writable, 2)
        .expect("writable");
    let third = dir.lease_keys(a, 3).expect("lease");
    assert_eq!(third.start, second.end, "refused leases consume nothing");
}

/// Sizes are recorded as reported.
pub fn volume_sizes(open: Open<'_>) {
    let dir = open();
    register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    let vid = dir.allocate_volume(0).expect("allocate").id;
    let volume = dir.update_volume_sizes(vid, 4096, 7).expect("update");
    assert_eq!((volume.size_bytes, volume.needle_count), (4096, 7));
    assert_eq!(dir.volume(vid).expect("get"), volume);
    assert!(matches!(
        dir.update_volume_sizes(5, 1, 1),
        Err(DirectoryError::UnknownVolume { id: 5 })
    ));
}

/// Everything committed survives a reopen; leases and ids continue above.
pub fn state_survives_reopen(open: Open<'_>) {
    let (nodes, volumes, lease) = {
        let dir = open();
        register_stores(
            &*dir,
            &[("s1", "r1"), ("s2", "r2"), ("s3", "r3"), ("s4", "r4")],
            0,
        );
        let a = dir.allocate_volume(1).expect("allocate").id;
        let b = dir.allocate_volume(2).expect("allocate");
        dir.mark_replica_stale(b.id, &b.replicas[0], true)
            .expect("stale");
        dir.set_volume_state(a, VolumeState::Locked, 3)
            .expect("lock");
        dir.update_volume_sizes(a, 100, 2).expect("sizes");
        let c = dir.allocate_volume(4).expect("allocate").id;
        let lease = dir.lease_keys(c, 1000).expect("lease");
        (
            dir.list_nodes().expect("list"),
            dir.list_volumes().expect("list"),
            (c, lease),
        )
    };
    let dir = open();
    assert_eq!(dir.list_nodes().expect("list"), nodes);
    assert_eq!(dir.list_volumes().expect("list"), volumes);
    let (c, before) = lease;
    let after = dir.lease_keys(c, 1).expect("lease");
    assert_eq!(
        after.start, before.end,
        "leases continue above the last one"
    );
    let next = dir.allocate_volume(5).expect("allocate");
    assert!(
        volumes.iter().all(|v| v.id < next.id),
        "volume ids are never reused"
    );
}

/// A volume that never leased a key can be discarded; one that did cannot.
pub fn discard_failed_allocation(open: Open<'_>) {
    let dir = open();
    register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    let failed = dir.allocate_volume(0).expect("allocate").id;
    let used = dir.allocate_volume(0).expect("allocate").id;
    dir.lease_keys(used, 1).expect("lease");
    dir.discard_volume(failed).expect("discard");
    assert!(matches!(
        dir.volume(failed),
        Err(DirectoryError::UnknownVolume { .. })
    ));
    assert!(matches!(
        dir.discard_volume(used),
        Err(DirectoryError::VolumeInUse { .. })
    ));
    assert!(matches!(
        dir.discard_volume(failed),
        Err(DirectoryError::UnknownVolume { .. })
    ));
    let next = dir.allocate_volume(1).expect("allocate").id;
    assert!(next > used, "a discarded id is never reused");
}

/// Volumes are listed in pages by id, gaps skipped, and a scan of every
/// volume crosses pages.
pub fn volume_pages(open: Open<'_>) {
    let dir = open();
    register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    let count = VOLUME_PAGE_MAX + 3;
    let mut ids: Vec<u32> = (0..count)
        .map(|_| dir.allocate_volume(0).expect("allocate").id)
        .collect();
    dir.discard_volume(ids.remove(1)).expect("discard");
    let listed = |after: Option<u32>, limit: usize| -> Vec<u32> {
        let page = dir.volumes(after, limit).expect("page");
        page.iter().map(|v| v.id).collect()
    };
    assert_eq!(listed(None, 2), ids[..2]);
    assert_eq!(listed(Some(ids[0]), 2), ids[1..3], "the gap is skipped");
    assert_eq!(listed(Some(ids[0] + 1), 1), ids[1..2], "after an absent id");
    assert_eq!(listed(ids.last().copied(), 5), Vec::<u32>::new());
    assert_eq!(listed(Some(u32::MAX), 5), Vec::<u32>::new());
    assert_eq!(listed(Some(ids[count - 5]), 10), ids[count - 4..]);
    let scanned: Vec<u32> = dir
        .list_volumes()
        .expect("scan")
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(scanned, ids, "every volume, across pages");
}

/// Damaged-needle records: created or extended by reports, paged in
/// `(volume, key)` order, resolved replica by replica, marked lost, and kept
/// across a reopen.
pub fn damaged_needles(open: Open<'_>) {
    let (a, b) = {
        let dir = open();
        register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
        let a = dir.allocate_volume(0).expect("allocate").id;
        let b = dir.allocate_volume(0).expect("allocate").id;
        let first = dir
            .report_damaged_needle(a, 5, "s1", Some(0x1234_5678), 10)
            .expect("report");
        assert_eq!(
            first,
            DamagedNeedle {
                volume: a,
                key: 5,
                cookie: Some(0x1234_5678),
                blob_id: Some(format!("{a},0512345678")),
                replicas: vec!["s1".into()],
                lost: false,
                reported_ms: 10,
            }
        );
        let second = dir
            .report_damaged_needle(a, 5, "s2", None, 20)
            .expect("report");
        assert_eq!(second.replicas, ["s1", "s2"]);
        assert_eq!((second.cookie, second.reported_ms), (first.cookie, 10));
        let again = dir
            .report_damaged_needle(a, 5, "s2", None, 30)
            .expect("report");
        assert_eq!(again, second, "idempotent");
        dir.report_damaged_needle(a, 2, "s3", None, 40)
            .expect("report");
        dir.report_damaged_needle(b, 1, "s3", None, 40)
            .expect("report");
        assert!(matches!(
            dir.report_damaged_needle(99, 1, "s1", None, 0),
            Err(DirectoryError::UnknownVolume { .. })
        ));
        assert!(matches!(
            dir.report_damaged_needle(a, 1, "nobody", None, 0),
            Err(DirectoryError::NotAReplica { .. })
        ));
        let keys = |page: Vec<DamagedNeedle>| -> Vec<(u32, u64)> {
            page.into_iter().map(|n| (n.volume, n.key)).collect()
        };
        let all = keys(dir.damaged_needles(None, 10).expect("list"));
        assert_eq!(all, [(a, 2), (a, 5), (b, 1)]);
        assert_eq!(keys(dir.damaged_needles(None, 1).expect("list")), [(a, 2)]);
        assert_eq!(
            keys(dir.damaged_needles(Some((a, 2)), 10).expect("list")),
            [(a, 5), (b, 1)]
        );
        assert_eq!(
            keys(dir.damaged_needles(Some((a, u64::MAX)), 10).expect("list")),
            [(b, 1)]
        );
        let left = dir.resolve_damaged_needle(a, 5, "s1").expect("resolve");
        assert_eq!(left.expect("s2 still damaged").replicas, ["s2"]);
        assert_eq!(
            dir.resolve_damaged_needle(a, 5, "s2").expect("resolve"),
            None
        );
        assert_eq!(dir.resolve_damaged_needle(a, 5, "s2").expect("again"), None);
        let lost = dir.mark_needle_lost(b, 1).expect("lost");
        assert!(lost.lost);
        assert!(matches!(
            dir.mark_needle_lost(a, 77),
            Err(DirectoryError::UnknownNeedle { .. })
        ));
        (a, b)
    };
    let dir = open();
    let left = dir.damaged_needles(None, 10).expect("list");
    assert_eq!(
        left.iter()
            .map(|n| (n.volume, n.key, n.lost))
            .collect::<Vec<_>>(),
        [(a, 2, false), (b, 1, true)]
    );
}

/// Registers a cell of f4 storage nodes `{prefix}-N` in `racks` racks
/// `{prefix}-rack-M`.
pub fn register_cell(dir: &dyn Directory, prefix: &str, nodes: usize, racks: usize, now_ms: u64) {
    for n in 0..nodes {
        let rack = format!("{prefix}-rack-{}", n % racks);
        dir.register_node(
            registration(&format!("{prefix}-{n}"), NodeRole::F4Storage, &rack),
            now_ms,
        )
        .expect("register f4 node");
    }
}

/// Every registered node, by id.
fn nodes_by_id(dir: &dyn Directory) -> BTreeMap<String, NodeRecord> {
    dir.list_nodes()
        .expect("nodes")
        .into_iter()
        .map(|n| (n.id.clone(), n))
        .collect()
}

/// A locked volume on three stores.
fn locked_volume(dir: &dyn Directory) -> u32 {
    register_stores(dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    let vid = dir.allocate_volume(0).expect("allocate").id;
    dir.set_volume_state(vid, VolumeState::Locked, 1)
        .expect("lock");
    vid
}

/// A volume of `len` bytes locked on three stores, then sealed into the
/// cell (generation 1) and committed: warm.
fn sealed_volume(dir: &dyn Directory, len: u64) -> LogicalVolume {
    let vid = locked_volume(dir);
    dir.begin_seal(vid).expect("begin");
    dir.place_warm(vid, place_request(1, len), false)
        .expect("place");
    dir.commit_warm(vid, 1).expect("commit")
}

/// A placement request of generation `generation` for a volume of `len`
/// bytes in blocks of at most 1 KiB.
fn place_request(generation: u64, len: u64) -> PlaceRequest {
    PlaceRequest {
        generation,
        geometry: f4::Geometry::choose(len, 1024, 10, 4, 512).expect("geometry"),
        needle_count: 3,
        datacenters: Vec::new(),
    }
}

/// Every seal attempt takes a new generation; only the attempt in progress
/// can be placed, committed or aborted; a committed volume is warm, final,
/// and survives a reopen.
pub fn warm_seal_attempts(open: Open<'_>) {
    let dir = open();
    register_cell(&*dir, "f4", 14, 14, 0);
    let vid = locked_volume(&*dir);
    let writable = dir.allocate_volume(2).expect("allocate").id;
    assert!(matches!(
        dir.begin_seal(writable),
        Err(DirectoryError::InvalidTransition { .. })
    ));
    assert!(matches!(
        dir.begin_seal(77),
        Err(DirectoryError::UnknownVolume { id: 77 })
    ));
    let first = dir.begin_seal(vid).expect("begin");
    assert_eq!(
        (first.state, first.last_generation),
        (VolumeState::Sealing, 1)
    );
    dir.place_warm(vid, place_request(1, 5000), false)
        .expect("place");
    let aborted = dir.abort_seal(vid, 1).expect("abort");
    assert_eq!((aborted.state, aborted.warm), (VolumeState::Locked, None));
    let second = dir.begin_seal(vid).expect("begin again");
    assert_eq!(second.last_generation, 2, "a new attempt, a new generation");
    for stale in [1, 3] {
        assert!(matches!(
            dir.place_warm(vid, place_request(stale, 5000), false),
            Err(DirectoryError::InvalidTransition { .. })
        ));
    }
    assert!(
        dir.commit_warm(vid, 2).is_err(),
        "an attempt is placed before it commits"
    );
    assert!(
        dir.open_journal(vid, 2).is_err(),
        "a journal opens once placed"
    );
    dir.place_warm(vid, place_request(2, 5000), false)
        .expect("place");
    assert!(matches!(
        dir.open_journal(vid, 1),
        Err(DirectoryError::InvalidTransition { .. })
    ));
    for _ in 0..2 {
        let opened = dir.open_journal(vid, 2).expect("open the journal");
        assert!(opened.warm.expect("record").journal_open);
    }
    assert!(matches!(
        dir.commit_warm(vid, 1),
        Err(DirectoryError::InvalidTransition { .. })
    ));
    let warm = dir.commit_warm(vid, 2).expect("commit");
    assert_eq!(warm.state, VolumeState::Warm);
    assert_eq!(
        dir.commit_warm(vid, 2).expect("again").state,
        VolumeState::Warm
    );
    for to in [VolumeState::Locked, VolumeState::ReadOnly] {
        assert!(matches!(
            dir.set_volume_state(vid, to, 9),
            Err(DirectoryError::InvalidTransition { .. })
        ));
    }
    assert!(
        dir.begin_seal(vid).is_err(),
        "a warm volume is not sealed again"
    );
    assert!(
        dir.abort_seal(vid, 2).is_err(),
        "nor aborted once committed"
    );
    drop(dir);
    let reopened = open().volume(vid).expect("volume");
    assert_eq!(reopened, warm);
    assert_eq!(reopened.warm.expect("record").generation, 2);
}

/// Blocks of a stripe go to distinct racks and holders to distinct racks;
/// a small cell is refused unless accepted, and then says what it tolerates.
pub fn warm_placement(open: Open<'_>) {
    let dir = open();
    register_cell(&*dir, "f4", 14, 7, 0);
    let vid = locked_volume(&*dir);
    dir.begin_seal(vid).expect("begin");
    assert!(matches!(
        dir.place_warm(vid, place_request(1, 40_000), false),
        Err(DirectoryError::NotEnoughRacks {
            needed: 14,
            available: 7
        })
    ));
    let placed = dir
        .place_warm(vid, place_request(1, 40_000), true)
        .expect("accepted");
    let warm = placed.warm.expect("record");
    assert_eq!(warm.tolerated_rack_losses, 2, "two blocks per rack");
    assert_eq!(warm.stripes.len(), 4);
    let nodes = nodes_by_id(&*dir);
    for stripe in &warm.stripes {
        assert_eq!(stripe.len(), 14);
        let distinct: BTreeSet<&String> = stripe.iter().collect();
        assert_eq!(distinct.len(), 14, "every block on its own node");
    }
    let holder_racks: BTreeSet<&str> = warm
        .journal_holders
        .iter()
        .map(|h| nodes[h].rack.as_str())
        .collect();
    assert_eq!((warm.journal_holders.len(), holder_racks.len()), (5, 5));

    // With 14 racks or more, each block of a stripe has its own rack.
    drop(dir);
    let dir = open();
    register_cell(&*dir, "f4-big", 14, 14, 0);
    dir.begin_seal(vid).expect("begin");
    let warm = dir
        .place_warm(vid, place_request(2, 40_000), false)
        .expect("placed")
        .warm
        .expect("record");
    assert_eq!(warm.tolerated_rack_losses, 4);
    let nodes = nodes_by_id(&*dir);
    for stripe in &warm.stripes {
        let racks: BTreeSet<&str> = stripe.iter().map(|n| nodes[n].rack.as_str()).collect();
        assert_eq!(racks.len(), 14);
    }
}

/// Holders turn stale and fresh again only after a merge that began after
/// the last delete they missed; damaged blocks are recorded once.
pub fn warm_holders_and_blocks(open: Open<'_>) {
    let dir = open();
    register_cell(&*dir, "f4", 14, 14, 0);
    let warm = sealed_volume(&*dir, 5000);
    let vid = warm.id;
    let holder = warm.warm.as_ref().expect("record").journal_holders[0].clone();
    assert!(matches!(
        dir.set_holder_stale(vid, "f4-not-a-holder", None),
        Err(DirectoryError::NotAReplica { .. })
    ));
    let stale = dir.set_holder_stale(vid, &holder, None).expect("stale");
    let epoch = stale.repair_epoch;
    assert_eq!(
        stale.warm.as_ref().expect("record").stale_holders,
        std::slice::from_ref(&holder)
    );
    // Another missed delete while a merge runs: that merge does not clear it.
    let again = dir
        .set_holder_stale(vid, &holder, None)
        .expect("stale again");
    assert!(again.repair_epoch > epoch);
    let kept = dir
        .set_holder_stale(vid, &holder, Some(epoch))
        .expect("old merge");
    assert_eq!(
        kept.warm.as_ref().expect("record").stale_holders,
        std::slice::from_ref(&holder)
    );
    let fresh = dir
        .set_holder_stale(vid, &holder, Some(again.repair_epoch))
        .expect("merged");
    assert!(fresh.warm.expect("record").stale_holders.is_empty());

    let placed = &warm.warm.as_ref().expect("record").stripes;
    let node_of = |stripe: u64, block: u32| {
        placed
            .get(stripe as usize)
            .and_then(|s| s.get(block as usize))
            .cloned()
            .unwrap_or_else(|| "f4-3".into())
    };
    let report = |stripe: u64, block: u32, generation: u64| DamagedBlockRequest {
        generation,
        stripe,
        block,
        node: node_of(stripe, block),
        reason: "test".into(),
        silent: false,
    };
    dir.report_damaged_block(vid, &report(0, 3, 1), 5)
        .expect("report");
    let twice = dir
        .report_damaged_block(vid, &report(0, 3, 1), 6)
        .expect("again");
    let damaged = twice.warm.expect("record").damaged_blocks;
    assert_eq!(damaged.len(), 1);
    assert_eq!(
        (damaged[0].stripe, damaged[0].block, damaged[0].reported_ms),
        (0, 3, 5)
    );
    assert!(!damaged[0].silent);
    // Wrong bytes under good checksums, found later, mark the record so;
    // a checksum failure after that does not unmark it.
    let silent = DamagedBlockRequest {
        silent: true,
        ..report(0, 3, 1)
    };
    let marked = dir.report_damaged_block(vid, &silent, 7).expect("silent");
    let loud_again = dir
        .report_damaged_block(vid, &report(0, 3, 1), 8)
        .expect("loud");
    for volume in [marked, loud_again] {
        let warm = volume.warm.expect("record");
        assert_eq!(warm.damaged_blocks.len(), 1);
        assert!(warm.is_silently_damaged(0, 3));
        assert_eq!(warm.damaged_blocks[0].reported_ms, 5);
    }
    for bad in [report(0, 14, 1), report(9, 0, 1), report(0, 0, 2)] {
        assert!(matches!(
            dir.report_damaged_block(vid, &bad, 7),
            Err(DirectoryError::BadRequest(_))
        ));
    }
    // A report about a copy the record no longer names changes nothing.
    let elsewhere = DamagedBlockRequest {
        node: "f4-elsewhere".into(),
        ..report(0, 4, 1)
    };
    let unchanged = dir
        .report_damaged_block(vid, &elsewhere, 8)
        .expect("ignored");
    assert_eq!(unchanged.warm.expect("record").damaged_blocks.len(), 1);
}

/// A rebuilt block moves only from the node the record still names and
/// never onto a node holding another block of its stripe; damage reported
/// before the rebuild is cleared, later damage kept; a moved block that
/// shares a rack lowers the tolerance. A lost holder's place goes to a
/// node that is not a holder yet, stale until it merges.
pub fn warm_rebuilds(open: Open<'_>) {
    let dir = open();
    register_cell(&*dir, "f4", 15, 15, 0);
    let sealed = sealed_volume(&*dir, 5000);
    let vid = sealed.id;
    let warm = sealed.warm.expect("record");
    assert_eq!(warm.tolerated_rack_losses, 4);
    let stripe = &warm.stripes[0];
    let spare = (0..15)
        .map(|n| format!("f4-{n}"))
        .find(|n| !stripe.contains(n))
        .expect("a node outside the stripe");
    let damaged = |block: u32, node: &str| DamagedBlockRequest {
        generation: 1,
        stripe: 0,
        block,
        node: node.to_owned(),
        reason: "test".into(),
        silent: false,
    };
    dir.report_damaged_block(vid, &damaged(2, &stripe[2]), 10)
        .expect("report");
    let rebuilt = |block: u32, from: &str, node: &str, started_ms: u64| RebuiltBlockRequest {
        generation: 1,
        stripe: 0,
        block,
        from: from.to_owned(),
        node: node.to_owned(),
        started_ms,
        owner: "coordinator-a".into(),
    };
    let plan = |block: u32, from: &str, to: &str| RebuildClaimRequest {
        owner: "coordinator-a".into(),
        lease_ms: 1000,
        generation: 1,
        blocks: vec![JobBlock {
            block,
            from: from.to_owned(),
            to: to.to_owned(),
        }],
        balance: false,
    };
    // Refused plans: another node than the record's, a node with a block
    // of the stripe, an unknown node or generation, a block outside the
    // stripe.
    for (bad, conflict) in [
        (plan(2, &spare, &spare), true),
        (plan(2, &stripe[2], &stripe[3]), true),
        (plan(2, &stripe[2], "f4-unknown"), false),
        (
            RebuildClaimRequest {
                generation: 2,
                ..plan(2, &stripe[2], &spare)
            },
            false,
        ),
        (plan(14, &stripe[2], &spare), false),
    ] {
        match dir.claim_rebuild(vid, 0, &bad, 15) {
            Err(DirectoryError::PlacementConflict { .. }) if conflict => {}
            Err(DirectoryError::BadRequest(_)) if !conflict => {}
            other => panic!("{bad:?} answered {other:?}"),
        }
    }
    // Nothing is recorded without a claim whose plan names the move.
    assert!(matches!(
        dir.record_rebuilt_block(vid, &rebuilt(2, &stripe[2], &spare, 20), 20),
        Err(DirectoryError::BadRequest(_))
    ));
    dir.claim_rebuild(vid, 0, &plan(2, &stripe[2], &spare), 15)
        .expect("claim");
    for bad in [
        rebuilt(3, &stripe[3], &spare, 20),
        RebuiltBlockRequest {
            owner: "coordinator-b".into(),
            ..rebuilt(2, &stripe[2], &spare, 20)
        },
    ] {
        assert!(
            dir.record_rebuilt_block(vid, &bad, 20).is_err(),
            "{bad:?} is not the holder's plan"
        );
    }
    assert!(
        matches!(
            dir.record_rebuilt_block(vid, &rebuilt(2, &stripe[2], &spare, 20), 2000),
            Err(DirectoryError::JobClaimed { .. })
        ),
        "a claim run out records nothing"
    );
    let moved = dir
        .record_rebuilt_block(vid, &rebuilt(2, &stripe[2], &spare, 20), 20)
        .expect("moved")
        .warm
        .expect("record");
    assert_eq!(moved.stripes[0][2], spare);
    assert!(
        moved.damaged_blocks.is_empty(),
        "damage before the rebuild is cleared"
    );
    assert_eq!(
        moved.tolerated_rack_losses, 4,
        "the spare has a rack of its own"
    );
    let end = |error: Option<&str>| EndRequest {
        owner: "coordinator-a".into(),
        error: error.map(str::to_owned),
    };
    assert_eq!(dir.end_rebuild(vid, 0, &end(None), 21).expect("end"), None);
    // Damage reported while a rebuild ran stays.
    dir.report_damaged_block(vid, &damaged(5, &stripe[5]), 30)
        .expect("report");
    dir.claim_rebuild(vid, 0, &plan(5, &stripe[5], &stripe[5]), 25)
        .expect("claim in place");
    let kept = dir
        .record_rebuilt_block(vid, &rebuilt(5, &stripe[5], &stripe[5], 25), 31)
        .expect("in place")
        .warm
        .expect("record");
    assert_eq!(kept.damaged_blocks.len(), 1);
    // A copy (a balancer's move, started at 0) clears no report at all.
    let copied = dir
        .record_rebuilt_block(vid, &rebuilt(5, &stripe[5], &stripe[5], 0), 31)
        .expect("copied")
        .warm
        .expect("record");
    assert_eq!(copied.damaged_blocks.len(), 1);
    dir.end_rebuild(vid, 0, &end(None), 32).expect("end");
    // A node in another block's rack costs a rack of tolerance.
    let rack_of_block_0 = nodes_by_id(&*dir)[&stripe[0]].rack.clone();
    dir.register_node(
        registration("f4-extra", NodeRole::F4Storage, &rack_of_block_0),
        0,
    )
    .expect("register");
    dir.claim_rebuild(vid, 0, &plan(1, &stripe[1], "f4-extra"), 35)
        .expect("claim");
    let shared = dir
        .record_rebuilt_block(vid, &rebuilt(1, &stripe[1], "f4-extra", 40), 40)
        .expect("moved into a shared rack")
        .warm
        .expect("record");
    dir.end_rebuild(vid, 0, &end(None), 41).expect("end");
    assert_eq!(shared.tolerated_rack_losses, 3);

    let holder = warm.journal_holders[0].clone();
    let other = warm.journal_holders[1].clone();
    let replace = |node: &str| ReplaceHolderRequest {
        generation: 1,
        node: node.to_owned(),
    };
    let epoch = dir.volume(vid).expect("volume").repair_epoch;
    assert!(matches!(
        dir.replace_holder(vid, &holder, &replace(&other)),
        Err(DirectoryError::PlacementConflict { .. })
    ));
    assert!(matches!(
        dir.replace_holder(vid, "f4-unknown", &replace("f4-extra")),
        Err(DirectoryError::NotAReplica { .. })
    ));
    let new_holder = (0..15)
        .map(|n| format!("f4-{n}"))
        .find(|n| !warm.journal_holders.contains(n))
        .expect("a node that is not a holder");
    let replaced = dir
        .replace_holder(vid, &holder, &replace(&new_holder))
        .expect("replaced");
    assert!(replaced.repair_epoch > epoch);
    let record = replaced.warm.expect("record");
    assert!(!record.journal_holders.contains(&holder));
    assert!(record.journal_holders.contains(&new_holder));
    assert_eq!(record.stale_holders, vec![new_holder.clone()]);
    // The last fresh holder is never replaced: the others (stale) may
    // lack deletes only it took.
    let others: Vec<String> = record.journal_holders[1..]
        .iter()
        .filter(|h| **h != new_holder)
        .cloned()
        .collect();
    for stale in &others[..others.len() - 1] {
        dir.set_holder_stale(vid, stale, None).expect("stale");
    }
    let last_fresh = others.last().expect("a holder").clone();
    let spare = (0..15)
        .map(|n| format!("f4-{n}"))
        .find(|n| !record.journal_holders.contains(n))
        .expect("a node that is not a holder");
    assert!(matches!(
        dir.replace_holder(vid, &last_fresh, &replace(&spare)),
        Err(DirectoryError::PlacementConflict { .. })
    ));
    dir.replace_holder(vid, &others[0], &replace(&spare))
        .expect("a stale holder may go while a fresh one stays");
}

/// Migration jobs: one claim at a time, taken over once its lease ran out,
/// renewed by steps, released by a final step, and kept across a reopen.
pub fn volume_ownership(open: Open<'_>) {
    let dir = open();
    register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    let [a, b] = [0, 0].map(|_| dir.allocate_volume(0).expect("allocate").id);
    let claim = |volume, last_write_ms| VolumeClaim {
        volume,
        last_write_ms,
    };
    let ids = |owned: Vec<LogicalVolume>| owned.iter().map(|v| v.id).collect::<Vec<_>>();
    assert!(matches!(
        dir.own_volumes("", "p", &[], 1000, 0),
        Err(DirectoryError::BadRequest(_))
    ));
    // Process p1 of router r1 claims both; router r2, and a second live
    // process of r1, cannot take them while the claims hold.
    let owned = dir
        .own_volumes("r1", "p1", &[claim(a, Some(5)), claim(b, None)], 1000, 10)
        .expect("claim");
    assert_eq!(ids(owned.clone()), vec![a, b]);
    assert_eq!(owned[0].owner.as_ref().map(|o| o.until_ms), Some(1010));
    assert_eq!(owned[0].last_write_ms, Some(5));
    for (owner, instance) in [("r2", "q1"), ("r1", "p2")] {
        let taken = dir.own_volumes(owner, instance, &[claim(a, None)], 1000, 500);
        assert!(ids(taken.expect("claim")).is_empty(), "{owner} {instance}");
    }
    // p1 renews; once p1 is gone and its claims ran out, a restarted r1
    // (claiming nothing) gets both back, renewed to it.
    let renewed = dir.own_volumes("r1", "p1", &[], 1000, 900).expect("renew");
    assert_eq!(ids(renewed), vec![a, b]);
    let resumed = dir
        .own_volumes("r1", "p2", &[], 1000, 5000)
        .expect("resume");
    assert_eq!(ids(resumed.clone()), vec![a, b]);
    assert_eq!(
        resumed[1]
            .owner
            .as_ref()
            .map(|o| (o.instance.as_str(), o.until_ms)),
        Some(("p2", 6000))
    );
    // Once a claim ran out another router may take the volume; a volume no
    // longer writable is nobody's.
    dir.set_volume_state(b, VolumeState::Locked, 7000)
        .expect("lock");
    let taken = dir
        .own_volumes("r2", "q1", &[claim(a, Some(7))], 1000, 7000)
        .expect("take");
    assert_eq!(ids(taken), vec![a]);
    assert!(ids(dir.own_volumes("r1", "p2", &[], 1000, 7001).expect("r1")).is_empty());
    drop(dir);
    let reopened = open().volume(a).expect("volume");
    assert_eq!(reopened.owner.map(|o| o.id).as_deref(), Some("r2"));
    assert_eq!(reopened.last_write_ms, Some(7));
}

/// Rebuild jobs: claimed with a lease by one coordinator at a time,
/// renewed by their holder only, taken up again (an attempt more) once
/// failed or run out, removed when done or dropped, listed in pages, and
/// kept across a reopen.
pub fn rebuild_jobs(open: Open<'_>) {
    let dir = open();
    register_cell(&*dir, "f4", 16, 16, 0);
    let sealed = sealed_volume(&*dir, 50_000);
    let vid = sealed.id;
    let warm = sealed.warm.expect("warm");
    assert!(warm.stripes.len() >= 2, "two stripes to list");
    let spare = |stripe: usize| {
        (0..16)
            .map(|n| format!("f4-{n}"))
            .find(|n| !warm.stripes[stripe].contains(n))
            .expect("a node outside the stripe")
    };
    let claim = |owner: &str, stripe: u64, now: u64| {
        let members = &warm.stripes[stripe as usize];
        let request = RebuildClaimRequest {
            owner: owner.into(),
            lease_ms: 1000,
            generation: 1,
            blocks: vec![JobBlock {
                block: 0,
                from: members[0].clone(),
                to: spare(stripe as usize),
            }],
            balance: false,
        };
        dir.claim_rebuild(vid, stripe, &request, now)
    };
    // A fence (no block) holds a stripe without a job, and is done.
    let fence = RebuildClaimRequest {
        owner: "a".into(),
        lease_ms: 1000,
        generation: 1,
        blocks: Vec::new(),
        balance: false,
    };
    dir.claim_rebuild(vid, 0, &fence, 0).expect("fence");
    assert!(matches!(
        claim("b", 0, 5),
        Err(DirectoryError::JobClaimed { .. })
    ));
    let done = EndRequest {
        owner: "a".into(),
        error: None,
    };
    assert_eq!(dir.end_rebuild(vid, 0, &done, 6).expect("end"), None);
    let job = claim("a", 0, 10).expect("claim");
    assert_eq!(
        (job.owner.as_str(), job.lease_until_ms, job.attempts),
        ("a", 1010, 1)
    );
    for owner in ["b", "a"] {
        assert!(
            matches!(
                claim(owner, 0, 500),
                Err(DirectoryError::JobClaimed { until_ms: 1010, .. })
            ),
            "a live claim is {owner}'s to wait for"
        );
    }
    let renew = |owner: &str, now: u64| {
        dir.renew_rebuild(
            vid,
            0,
            &RenewRequest {
                owner: owner.into(),
                lease_ms: 1000,
            },
            now,
        )
    };
    assert!(matches!(
        renew("b", 600),
        Err(DirectoryError::JobClaimed { .. })
    ));
    assert_eq!(renew("a", 600).expect("renew").lease_until_ms, 1600);
    assert!(matches!(
        dir.drop_rebuild(vid, 0, None, 700),
        Err(DirectoryError::JobClaimed { .. })
    ));
    // Run out: taken up by another coordinator, an attempt more; the old
    // holder can neither renew nor end it.
    let taken = claim("b", 0, 1600).expect("take over");
    assert_eq!((taken.owner.as_str(), taken.attempts), ("b", 2));
    assert!(renew("a", 1700).is_err());
    let end = |owner: &str, error: Option<&str>, now: u64| {
        dir.end_rebuild(
            vid,
            0,
            &EndRequest {
                owner: owner.into(),
                error: error.map(str::to_owned),
            },
            now,
        )
    };
    assert!(end("a", None, 1700).is_err());
    // Failed: kept, released, the error said; claimed again at once.
    let failed = end("b", Some("source gone"), 1700)
        .expect("end")
        .expect("kept");
    assert_eq!(
        (failed.owner.as_str(), failed.last_error.as_deref()),
        ("", Some("source gone"))
    );
    assert!(
        matches!(
            dir.claim_rebuild(vid, 0, &fence, 1700),
            Err(DirectoryError::JobClaimed { .. })
        ),
        "a fence never replaces a job's plan"
    );
    assert_eq!(claim("a", 0, 1701).expect("again").attempts, 3);
    claim("a", 1, 1702).expect("another stripe");
    drop(dir);
    let dir = open();
    let all = dir.rebuilds(None, 10).expect("list");
    assert_eq!(
        all.iter()
            .map(|j| (j.stripe, j.attempts))
            .collect::<Vec<_>>(),
        vec![(0, 3), (1, 1)],
        "kept across a reopen, in stripe order"
    );
    let first = dir.rebuilds(None, 1).expect("page");
    let rest = dir
        .rebuilds(Some((vid, first[0].stripe)), 10)
        .expect("page");
    assert_eq!((first.len(), rest.len(), rest[0].stripe), (1, 1, 1));
    // Done: removed; a run-out job dropped; dropping nothing is no error.
    let done = dir.end_rebuild(
        vid,
        0,
        &EndRequest {
            owner: "a".into(),
            error: None,
        },
        1800,
    );
    assert_eq!(done.expect("end"), None);
    assert!(
        matches!(
            dir.drop_rebuild(vid, 1, Some(2), 5000),
            Err(DirectoryError::JobClaimed { .. })
        ),
        "not the attempt the caller read"
    );
    dir.drop_rebuild(vid, 1, Some(1), 5000)
        .expect("drop run out");
    dir.drop_rebuild(vid, 1, None, 5000).expect("drop none");
    assert!(dir.rebuilds(None, 10).expect("list").is_empty());
}

pub fn migration_claims(open: Open<'_>) {
    let dir = open();
    register_cell(&*dir, "f4", 14, 14, 0);
    let vid = locked_volume(&*dir);
    assert!(matches!(
        dir.claim_migration(77, "m1", 1000, 0),
        Err(DirectoryError::UnknownVolume { id: 77 })
    ));
    assert!(matches!(
        dir.claim_migration(vid, "", 1000, 0),
        Err(DirectoryError::BadRequest(_))
    ));
    let job = dir.claim_migration(vid, "m1", 1000, 10).expect("claim");
    assert_eq!(
        (
            job.step,
            job.owner.as_str(),
            job.lease_until_ms,
            job.attempts
        ),
        (MigrationStep::Locked, "m1", 1010, 1)
    );
    // Another migrator waits for the lease, and so does a second job of
    // the same owner; the holder renews it with its steps.
    for owner in ["m2", "m1"] {
        assert!(matches!(
            dir.claim_migration(vid, owner, 1000, 500),
            Err(DirectoryError::JobClaimed { until_ms: 1010, .. })
        ));
    }
    let step = |owner: &str, step: MigrationStep| StepRequest {
        owner: owner.to_owned(),
        step,
        error: None,
        lease_ms: 1000,
    };
    let job = dir
        .update_migration(vid, &step("m1", MigrationStep::Encoding), 600)
        .expect("step");
    assert_eq!(
        (job.step, job.lease_until_ms),
        (MigrationStep::Encoding, 1600)
    );
    assert!(matches!(
        dir.update_migration(vid, &step("m2", MigrationStep::Verifying), 700),
        Err(DirectoryError::JobClaimed { .. })
    ));
    // The lease runs out: another migrator takes the job over, a new
    // attempt, and the first one's steps are refused.
    let job = dir
        .claim_migration(vid, "m2", 1000, 1700)
        .expect("take over");
    assert_eq!(
        (job.step, job.owner.as_str(), job.attempts, job.started_ms),
        (MigrationStep::Encoding, "m2", 2, 10)
    );
    assert!(matches!(
        dir.update_migration(vid, &step("m1", MigrationStep::Verifying), 1800),
        Err(DirectoryError::JobClaimed { .. })
    ));
    // A final step releases the claim, with its error.
    let failed = StepRequest {
        error: Some("no rack left".into()),
        ..step("m2", MigrationStep::Failed)
    };
    let job = dir.update_migration(vid, &failed, 1900).expect("fail");
    assert_eq!(
        (
            job.owner.as_str(),
            job.lease_until_ms,
            job.last_error.as_deref()
        ),
        ("", 0, Some("no rack left"))
    );
    assert!(matches!(
        dir.update_migration(vid, &step("m2", MigrationStep::Encoding), 1950),
        Err(DirectoryError::JobClaimed { .. })
    ));
    let job = dir.claim_migration(vid, "m1", 1000, 2000).expect("retry");
    assert_eq!((job.step, job.attempts), (MigrationStep::Locked, 3));
    let other = locked_volume(&*dir);
    dir.claim_migration(other, "m2", 1000, 2000).expect("claim");
    drop(dir);
    let dir = open();
    let jobs = dir.migrations(None, 10).expect("list");
    assert_eq!(
        jobs.iter()
            .map(|j| (j.volume, j.owner.as_str()))
            .collect::<Vec<_>>(),
        vec![(vid, "m1"), (other, "m2")],
        "by volume id, kept across a reopen"
    );
    let first = dir.migrations(None, 1).expect("page");
    let rest = dir.migrations(Some(first[0].volume), 10).expect("page");
    assert_eq!(
        (first[0].volume, rest.len(), rest[0].volume),
        (vid, 1, other)
    );
    assert!(
        dir.migrations(Some(u32::MAX), 10)
            .expect("past the end")
            .is_empty()
    );
}

/// A cell of 14 racks in each of `datacenters` (`dc-1`...: nodes
/// `{dc}-f4-N`).
fn register_datacenters(dir: &dyn Directory, datacenters: usize) {
    for d in 1..=datacenters {
        let dc = format!("dc-{d}");
        for n in 0..14 {
            let id = format!("{dc}-f4-{n}");
            let registration = NodeRegistration {
                datacenter: dc.clone(),
                ..registration(&id, NodeRole::F4Storage, &format!("{dc}-rack-{n}"))
            };
            dir.register_node(registration, 0)
                .expect("register f4 node");
        }
    }
}

/// A warm primary sealed into the least loaded datacenter.
fn warm_primary(dir: &dyn Directory) -> LogicalVolume {
    let vid = dir.allocate_volume(0).expect("allocate").id;
    dir.set_volume_state(vid, VolumeState::Locked, 1)
        .expect("lock");
    dir.begin_seal(vid).expect("begin");
    dir.place_warm(vid, place_request(1, 5000), false)
        .expect("place");
    dir.commit_warm(vid, 1).expect("commit")
}

/// A primary's five holders are at home and three in one other
/// datacenter; a copy goes to another datacenter, an XOR to a third;
/// links are set with the companion and removed with it; a copy stays
/// until its primary's XOR is warm, and a warm XOR is never dropped.
pub fn geo_companions(open: Open<'_>) {
    let dir = open();
    register_stores(&*dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], 0);
    register_datacenters(&*dir, 3);
    let nodes = nodes_by_id(&*dir);
    let dc_of = |id: &String| nodes[id].datacenter.clone();
    let a = warm_primary(&*dir);
    let b = warm_primary(&*dir);
    let home = |v: &LogicalVolume| v.warm.as_ref().expect("record").datacenter.clone();
    assert_ne!(
        home(&a),
        home(&b),
        "the second goes to the less loaded cell"
    );
    let holders = &a.warm.as_ref().expect("record").journal_holders;
    assert_eq!(holders.len(), 8);
    assert!(holders[..5].iter().all(|h| dc_of(h) == home(&a)));
    let remote: BTreeSet<String> = holders[5..].iter().map(dc_of).collect();
    assert_eq!(remote.len(), 1);
    assert!(!remote.contains(&home(&a)));

    let geometry = a.warm.as_ref().expect("record").geometry;
    let request = |of: Vec<u32>| CompanionRequest {
        of,
        geometry,
        datacenters: Vec::new(),
    };
    for bad in [vec![], vec![a.id, a.id], vec![a.id, b.id, 99]] {
        assert!(matches!(
            dir.create_companion(&request(bad), false, 5),
            Err(DirectoryError::BadRequest(_))
        ));
    }
    let copy = dir
        .create_companion(&request(vec![a.id]), false, 5)
        .expect("a copy");
    let copy_home = home(&copy);
    assert_ne!(copy_home, home(&a));
    assert_eq!(
        (copy.state, copy.geo.of.clone(), copy.last_generation),
        (VolumeState::Sealing, vec![a.id], 1)
    );
    let copy_warm = copy.warm.as_ref().expect("record");
    assert!(copy_warm.journal_holders.is_empty());
    assert!(
        copy_warm
            .stripes
            .iter()
            .flatten()
            .all(|n| dc_of(n) == copy_home)
    );
    assert_eq!(dir.volume(a.id).expect("a").geo.copy, Some(copy.id));
    assert!(
        matches!(
            dir.create_companion(&request(vec![a.id]), false, 6),
            Err(DirectoryError::PlacementConflict { .. })
        ),
        "one copy per primary"
    );
    assert!(
        matches!(
            dir.create_companion(&request(vec![copy.id]), false, 6),
            Err(DirectoryError::PlacementConflict { .. })
        ),
        "a companion has no companion"
    );
    // A companion whose job is claimed goes only by the claim's holder.
    let copy_b = dir
        .create_companion(&request(vec![b.id]), false, 5)
        .expect("a copy of b");
    dir.claim_migration(copy_b.id, "m1", 1000, 6)
        .expect("claim");
    for owner in [None, Some("m2")] {
        assert!(matches!(
            dir.drop_companion(copy_b.id, owner, 7),
            Err(DirectoryError::JobClaimed { .. })
        ));
    }
    dir.drop_companion(copy_b.id, Some("m1"), 7)
        .expect("dropped by its builder");
    assert_eq!(dir.volume(b.id).expect("b").geo.copy, None);
    assert!(
        dir.migrations(None, 10)
            .expect("jobs")
            .iter()
            .all(|j| j.volume != copy_b.id)
    );
    dir.commit_warm(copy.id, 1).expect("commit the copy");
    assert!(
        matches!(
            dir.drop_companion(copy.id, None, 10),
            Err(DirectoryError::PlacementConflict { .. })
        ),
        "a warm copy stays while its primary has no warm XOR"
    );

    let xor = dir
        .create_companion(&request(vec![a.id, b.id]), false, 7)
        .expect("an XOR");
    let third = home(&xor);
    assert!(third != home(&a) && third != home(&b), "{third}");
    let (a2, b2) = (dir.volume(a.id).expect("a"), dir.volume(b.id).expect("b"));
    assert_eq!((a2.geo.buddy, a2.geo.xor), (Some(b.id), Some(xor.id)));
    assert_eq!((b2.geo.buddy, b2.geo.xor), (Some(a.id), Some(xor.id)));
    assert!(matches!(
        dir.create_companion(&request(vec![b.id, a.id]), false, 8),
        Err(DirectoryError::PlacementConflict { .. })
    ));
    dir.commit_warm(xor.id, 1).expect("commit the XOR");
    assert!(matches!(
        dir.drop_companion(xor.id, None, 10),
        Err(DirectoryError::PlacementConflict { .. })
    ));
    dir.drop_companion(copy.id, None, 10)
        .expect("the copy goes");
    assert!(matches!(
        dir.volume(copy.id),
        Err(DirectoryError::UnknownVolume { .. })
    ));
    assert_eq!(dir.volume(a.id).expect("a").geo.copy, None);
    let mut dropped = vec![copy.id, copy_b.id];
    dropped.sort_unstable();
    assert_eq!(dir.dropped_companions(None, 10).expect("dropped"), dropped);
    assert_eq!(
        dir.dropped_companions(Some(dropped[0]), 10)
            .expect("dropped"),
        dropped[1..]
    );
    assert!(matches!(
        dir.drop_companion(a.id, None, 10),
        Err(DirectoryError::BadRequest(_))
    ));
    drop(dir);
    let reopened = open().volume(a.id).expect("a");
    assert_eq!(reopened.geo.xor, Some(xor.id));
}

/// Only a `down` node that no volume keeps data on is forgotten, for good
/// (a reopen keeps it forgotten); it may register again as a new node.
pub fn node_removal(open: Open<'_>) {
    {
        let dir = open();
        register_cell(&*dir, "f4", 14, 14, 0);
        let warm = sealed_volume(&*dir, 5000);
        let record = warm.warm.as_ref().expect("record");
        dir.register_node(registration("router-1", NodeRole::Router, "r1"), 0)
            .expect("register");
        let in_use = |id: &str, part: &str| match dir.remove_node(id) {
            Err(DirectoryError::NodeInUse { reason, .. }) => {
                assert!(reason.contains(part), "{id}: {reason}");
            }
            other => panic!("{id}: {other:?}"),
        };
        assert!(matches!(
            dir.remove_node("nobody"),
            Err(DirectoryError::UnknownNode { .. })
        ));
        in_use("router-1", "up");
        dir.mark_down_expired(10_000, 1_000).expect("mark down");
        let holder = record.journal_holders[0].clone();
        let block_only = record.stripes[0]
            .iter()
            .find(|node| !record.journal_holders.contains(node))
            .expect("a node with a block only")
            .clone();
        in_use("s1", "a replica");
        in_use(&holder, "index and journal");
        in_use(&block_only, "a block");
        let removed = dir.remove_node("router-1").expect("remove");
        assert_eq!(removed.role, NodeRole::Router);
        assert!(!nodes_by_id(&*dir).contains_key("router-1"));
        assert!(matches!(
            dir.remove_node("router-1"),
            Err(DirectoryError::UnknownNode { .. })
        ));
        for id in ["s1", &holder, &block_only] {
            assert!(nodes_by_id(&*dir).contains_key(id), "{id} was kept");
        }
    }
    let dir = open();
    assert!(
        !nodes_by_id(&*dir).contains_key("router-1"),
        "forgotten for good"
    );
    let again = dir
        .register_node(registration("router-1", NodeRole::Router, "r2"), 20_000)
        .expect("register again");
    assert_eq!((again.state, again.rack.as_str()), (NodeState::Up, "r2"));
}
