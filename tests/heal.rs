//! Self-healing on real processes (`hayloft up --spawn --nodes-per-rack 2`,
//! which starts a coordinator and a rebuilder beside a cell of 28 storage
//! nodes in 14 racks): warm blocks lost with a storage node's disk, with
//! its whole node, with a whole rack, four of one stripe at once, or
//! corrupt, come back without an operator, while every read keeps
//! succeeding and every delete stays deleted; bit rot in blocks and hot
//! needles is found by `hayloft scrub` and repaired, and a needle with no
//! good copy left is named, never served.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use common::volumes::{Blob, check_volume, delete, fill, seal, volume, volumes};
use common::{Cluster, fetch, get_json, http_client, paused_at, wait_until};
use serde_json::Value;

/// How long the cell gets to heal after each loss.
const HEAL_DEADLINE: Duration = Duration::from_secs(90);

/// 1 MiB volumes in blocks of 8 KiB (a dozen stripes, so that a node of
/// the 28 holds blocks of five or more); two storage nodes per rack; a
/// node silent for 2 s is down and after 6 s lost (a node restarted within
/// that keeps its blocks); quick coordinator and
/// repair passes; no rebuild throttle.
const ARGS: &[&str] = &[
    "--volume-size",
    "1MiB",
    "--max-blob-size",
    "160KiB",
    "--block-size",
    "8KiB",
    "--nodes-per-rack",
    "2",
    "--heartbeat-timeout",
    "2s",
    "--rebuild-after",
    "6s",
    "--coordinate-interval",
    "300ms",
    "--repair-interval",
    "300ms",
    "--rebuild-rate",
    "0",
    // Journals fold into their indexes after three tombstones, so that
    // holders are replaced and merged across folds too.
    "--fold-tombstones",
    "3",
    // Scrubs only when asked (`hayloft scrub`), so that what a scrub finds
    // is not repaired by a background one first.
    "--scrub-rate",
    "0",
];

/// The block file of `(stripe, block)` of `warm` on `node`.
fn block_path(
    cluster: &Cluster,
    node: &str,
    vid: u32,
    warm: &Value,
    stripe: u64,
    block: u32,
) -> PathBuf {
    let generation = warm["generation"].as_u64().expect("generation");
    cluster
        .data_dir
        .join(node)
        .join("blocks")
        .join(f4::block::block_file_name(vid, generation, stripe, block))
}

/// Every block of the volume's record: `(stripe, block) -> node`.
fn placement(warm: &Value) -> BTreeMap<(u64, u32), String> {
    let mut blocks = BTreeMap::new();
    for (stripe, nodes) in warm["stripes"].as_array().into_iter().flatten().enumerate() {
        for (block, node) in nodes.as_array().into_iter().flatten().enumerate() {
            blocks.insert(
                (stripe as u64, block as u32),
                node.as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    blocks
}

/// Every block's file, by place, as the record now says.
fn block_files(
    cluster: &Cluster,
    vid: u32,
    warm: &Value,
) -> anyhow::Result<BTreeMap<(u64, u32), Vec<u8>>> {
    placement(warm)
        .into_iter()
        .map(|((stripe, block), node)| {
            let path = block_path(cluster, &node, vid, warm, stripe, block);
            let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            Ok(((stripe, block), bytes))
        })
        .collect()
}

/// The block files of `vid` on the nodes not `gone` that the record does
/// not name where they lie (orphans the coordinator should remove).
fn orphans(
    cluster: &Cluster,
    vid: u32,
    warm: &Value,
    gone: &[&str],
) -> anyhow::Result<Vec<PathBuf>> {
    let named: std::collections::BTreeSet<PathBuf> = placement(warm)
        .into_iter()
        .map(|((stripe, block), node)| block_path(cluster, &node, vid, warm, stripe, block))
        .collect();
    let mut found = Vec::new();
    for node in std::fs::read_dir(&cluster.data_dir)? {
        let node = node?;
        let blocks = node.path().join("blocks");
        if gone.iter().any(|g| node.file_name() == *g) || !blocks.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&blocks)? {
            let path = file?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".block")
                && f4::block::generation_of(name, vid).is_some()
                && !named.contains(&path)
            {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// `GET /admin/repair`.
async fn repair_status(client: &reqwest::Client, router: &str) -> anyhow::Result<Value> {
    get_json(client, &format!("{router}/admin/repair")).await
}

/// Waits until every block of `vid` is where the record says, byte for
/// byte as `expected` (by place), none on the `gone` nodes, no stripe has
/// two blocks on one node, no holder is stale, nothing is left to rebuild,
/// no rebuild job is left in the directory and no block file is left
/// where the record does not name it.
async fn healed(
    cluster: &Cluster,
    client: &reqwest::Client,
    vid: u32,
    expected: &BTreeMap<(u64, u32), Vec<u8>>,
    gone: &[&str],
) -> anyhow::Result<Value> {
    let router = &cluster.router;
    wait_until("the cell to heal", HEAL_DEADLINE, || async {
        let warm = volume(client, router, vid).await?["warm"].clone();
        let on_gone = placement(&warm)
            .values()
            .any(|n| gone.contains(&n.as_str()))
            || gone.iter().any(|n| is_holder(&warm, n));
        let Ok(files) = block_files(cluster, vid, &warm) else {
            return Ok(false);
        };
        let stale = warm["stale_holders"].as_array().map_or(0, Vec::len);
        let status = repair_status(client, router).await?;
        let endangered = status["endangered_count"]
            .as_u64()
            .context("endangered_count")?;
        anyhow::ensure!(
            status["endangered"].as_array().map(Vec::len) == Some(endangered.min(100) as usize),
            "the answer shows the first 100 endangered stripes: {status}"
        );
        let jobs = status["jobs"].as_array().map_or(0, Vec::len);
        let orphans = orphans(cluster, vid, &warm, gone)?;
        Ok(!on_gone
            && files == *expected
            && stale == 0
            && endangered == 0
            && jobs == 0
            && orphans.is_empty())
    })
    .await
    .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    let warm = volume(client, router, vid).await?["warm"].clone();
    for stripe in warm["stripes"].as_array().context("stripes")? {
        let mut nodes: Vec<&str> = stripe
            .as_array()
            .context("stripe")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        nodes.sort_unstable();
        let count = nodes.len();
        nodes.dedup();
        anyhow::ensure!(
            nodes.len() == count,
            "two blocks of a stripe on one node: {stripe}"
        );
    }
    Ok(warm)
}

/// The storage node holding the most blocks of `warm`.
fn busiest_node(warm: &Value, except: &[&str]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for node in placement(warm).into_values() {
        *counts.entry(node).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(node, _)| !except.contains(&node.as_str()))
        .max_by_key(|(node, count)| (*count, std::cmp::Reverse(node.clone())))
        .map(|(node, _)| node)
        .expect("a node")
}

/// The places of `warm`'s blocks on `node`.
fn blocks_on(warm: &Value, node: &str) -> Vec<(u64, u32)> {
    placement(warm)
        .into_iter()
        .filter(|(_, n)| n == node)
        .map(|(place, _)| place)
        .collect()
}

fn is_holder(warm: &Value, node: &str) -> bool {
    warm["journal_holders"]
        .as_array()
        .is_some_and(|holders| holders.iter().any(|h| h == node))
}

/// The other storage node in `node`'s rack.
fn rack_partner(cluster: &Cluster, node: &str) -> anyhow::Result<String> {
    let nodes = cluster.nodes()?;
    let rack = cluster.node(node)?["rack"].clone();
    nodes
        .iter()
        .find(|n| n["role"] == "f4-storage" && n["rack"] == rack && n["id"] != node)
        .and_then(|n| n["id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no other node in {node}'s rack"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_rotten_blocks_and_needles_come_back_while_reads_go_on() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(ARGS).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let mut blobs = fill(&client, &router, 21, 1).await?;
    let vid = volumes(&client, &router)
        .await?
        .iter()
        .find(|v| v["state"] == "locked")
        .and_then(|v| v["id"].as_u64())
        .context("a locked volume")? as u32;
    for (n, blob) in blobs.iter_mut().enumerate() {
        if blob.volume() == vid && n % 6 == 1 {
            anyhow::ensure!(delete(&client, &router, &blob.id).await? == 204);
            blob.deleted = true;
        }
    }
    let sealed = seal(&cluster, vid).await?;
    let warm = sealed["volume"]["warm"].clone();
    let stripes = warm["stripes"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(stripes >= 10, "only {stripes} stripes");
    let original = block_files(&cluster, vid, &warm)?;
    check_volume(&client, &router, &blobs, vid).await?;

    // (a) A replaced disk: the node restarts empty in place; its blocks
    // are rebuilt onto it and, if it holds the journal, it merges.
    let disk = busiest_node(&warm, &[]);
    cluster.kill_node(&disk)?;
    std::fs::remove_dir_all(cluster.data_dir.join(&disk))?;
    let _restarted = cluster.restart_node(&disk)?;
    check_volume(&client, &router, &blobs, vid).await?;
    let warm_now = healed(&cluster, &client, vid, &original, &[]).await?;
    anyhow::ensure!(
        placement(&warm_now) == placement(&warm),
        "blocks moved off a node that came back"
    );
    if is_holder(&warm, &disk) {
        let generation = warm["generation"].as_u64().context("generation")?;
        let held = client
            .get(format!(
                "{}/volumes/{vid}/{generation}",
                cluster.node_url(&disk)?
            ))
            .send()
            .await?;
        anyhow::ensure!(
            held.status() == 200,
            "the emptied holder has no index again"
        );
    }
    check_volume(&client, &router, &blobs, vid).await?;

    // (b) A node lost for good: its blocks go to its rack's other node,
    // its journal holds to another node; deletes stay deleted.
    let mut deleted_now = Vec::new();
    for blob in blobs
        .iter_mut()
        .filter(|b| b.volume() == vid && !b.deleted)
        .step_by(4)
    {
        anyhow::ensure!(delete(&client, &router, &blob.id).await? == 204);
        blob.deleted = true;
        deleted_now.push(blob.id.clone());
    }
    let lost = busiest_node(&warm_now, &[&disk]);
    let partner = rack_partner(&cluster, &lost)?;
    let moved = blocks_on(&warm_now, &lost);
    anyhow::ensure!(moved.len() >= 5, "{lost} holds {} blocks", moved.len());
    cluster.kill_node(&lost)?;
    check_volume(&client, &router, &blobs, vid).await?;
    let warm_b = healed(&cluster, &client, vid, &original, &[&lost]).await?;
    let placed = placement(&warm_b);
    for place in &moved {
        anyhow::ensure!(
            placed[place] == partner,
            "block {place:?} went to {}, not {partner}",
            placed[place]
        );
    }
    anyhow::ensure!(
        !is_holder(&warm_b, &lost),
        "the lost node is still a journal holder"
    );
    anyhow::ensure!(
        warm_b["tolerated_rack_losses"] == 4,
        "{}",
        warm_b["tolerated_rack_losses"]
    );
    let status = repair_status(&client, &router).await?;
    anyhow::ensure!(
        status["lost_nodes"] == serde_json::json!([lost]),
        "{status}"
    );
    anyhow::ensure!(
        status["placement_violations"] == serde_json::json!([]),
        "{status}"
    );
    check_volume(&client, &router, &blobs, vid).await?;

    // (c) The rack's other node lost too: no node is left in the rack, so
    // its blocks go where they cost the least tolerance (another rack's
    // second node), and the violation is reported.
    let moved = blocks_on(&warm_b, &partner);
    cluster.kill_node(&partner)?;
    check_volume(&client, &router, &blobs, vid).await?;
    let warm_c = healed(&cluster, &client, vid, &original, &[&lost, &partner]).await?;
    let placed = placement(&warm_c);
    for place in &moved {
        anyhow::ensure!(
            placed[place] != partner,
            "block {place:?} still on {partner}"
        );
    }
    anyhow::ensure!(
        warm_c["tolerated_rack_losses"] == 3,
        "{}",
        warm_c["tolerated_rack_losses"]
    );
    let status = repair_status(&client, &router).await?;
    anyhow::ensure!(
        status["placement_violations"]
            .as_array()
            .map_or(0, Vec::len)
            == moved.len(),
        "{status}"
    );
    let metrics = client
        .get(format!("{router}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    anyhow::ensure!(
        metrics.contains("hayloft_placement_violations"),
        "metrics:\n{metrics}"
    );
    check_volume(&client, &router, &blobs, vid).await?;
    let warm_after = warm_c;
    let expected = original;

    // Four blocks of one stripe lost at once (and one of another): the
    // stripe with four goes first; every block comes back as it was.
    let stripe = 1u64;
    let mut gone = Vec::new();
    for block in [0u32, 5, 11, 13] {
        gone.push(block_path(
            &cluster,
            &placed[&(stripe, block)],
            vid,
            &warm_after,
            stripe,
            block,
        ));
    }
    gone.push(block_path(
        &cluster,
        &placed[&(2, 3)],
        vid,
        &warm_after,
        2,
        3,
    ));
    for path in &gone {
        std::fs::remove_file(path)?;
    }
    check_volume(&client, &router, &blobs, vid).await?;
    healed(&cluster, &client, vid, &expected, &[&lost, &partner]).await?;

    // A corrupt block that a read trips over is rebuilt in place.
    let live = blobs
        .iter()
        .find(|b| b.volume() == vid && !b.deleted && b.body.len() > 40_000)
        .context("a large live BLOB")?;
    let generation = warm_after["generation"].as_u64().context("generation")?;
    let holder = warm_after["journal_holders"][0]
        .as_str()
        .context("holder")?;
    let entry: Value = client
        .get(format!(
            "{}/volumes/{vid}/{generation}/keys/{:x}",
            cluster.node_url(holder)?,
            live.key()
        ))
        .send()
        .await?
        .json()
        .await?;
    let block_size = warm_after["geometry"]["block_size_bytes"]
        .as_u64()
        .context("block size")?;
    let offset = entry["offset"].as_u64().context("offset")?;
    let place = (
        offset / (block_size * 10),
        ((offset % (block_size * 10)) / block_size) as u32,
    );
    let path = block_path(
        &cluster,
        &placed[&place],
        vid,
        &warm_after,
        place.0,
        place.1,
    );
    let mut bytes = std::fs::read(&path)?;
    let at = 80 + (offset % block_size) as usize;
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes)?;
    live.check(&client, &router).await?;
    healed(&cluster, &client, vid, &expected, &[&lost, &partner]).await?;
    // Wrong bytes under good checksums (a bad write that checksummed what
    // it wrote): the read decodes the range from the rest of the stripe,
    // serves the right bytes, and has the block rebuilt. (The router first
    // drops its entry, which still names the block damaged from above.)
    common::post_json(&client, &format!("{router}/admin/volumes/{vid}/refresh")).await?;
    rewrite_with_checksums(&path, (offset % block_size) as usize + 40, Rewrite::InPlace)?;
    live.check(&client, &router).await?;
    healed(&cluster, &client, vid, &expected, &[&lost, &partner]).await?;

    // Bit rot nobody reads: bytes flipped in a data block, in a parity block
    // and in one hot replica's needle. The next scrub finds each (and has
    // each repaired); the one after finds nothing.
    let hot = blobs
        .iter()
        .find(|b| b.volume() != vid && b.body.len() > 1000)
        .context("a hot BLOB")?
        .clone();
    let hot_store = volume(&client, &router, hot.volume()).await?["replicas"][0]
        .as_str()
        .context("replica")?
        .to_owned();
    flip_needle_byte(&cluster, &client, &hot_store, &hot).await?;
    for (stripe, block) in [(3u64, 2u32), (4, 12)] {
        let path = block_path(
            &cluster,
            &placed[&(stripe, block)],
            vid,
            &warm_after,
            stripe,
            block,
        );
        let mut bytes = std::fs::read(&path)?;
        bytes[100] ^= 0x01;
        std::fs::write(&path, &bytes)?;
    }
    let found = scrub(&cluster, false).await?;
    let named = |key: &str| -> Vec<String> {
        found[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                format!(
                    "{}/{}/{}",
                    f["volume"],
                    f["what"].as_str().unwrap_or_default(),
                    f["node"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    let mut blocks = named("damaged_blocks");
    blocks.sort();
    anyhow::ensure!(
        blocks
            == vec![
                format!("{vid}/3.2/{}", placed[&(3, 2)]),
                format!("{vid}/4.12/{}", placed[&(4, 12)]),
            ],
        "{found}"
    );
    anyhow::ensure!(
        named("corrupt_needles") == vec![format!("{}/{:x}/{hot_store}", hot.volume(), hot.key())],
        "{found}"
    );
    anyhow::ensure!(found["unrecoverable"] == serde_json::json!([]), "{found}");
    hot.check(&client, &router).await?;
    healed(&cluster, &client, vid, &expected, &[&lost, &partner]).await?;
    wait_until("a scrub to find nothing", HEAL_DEADLINE, || async {
        let again = scrub(&cluster, false).await?;
        Ok(again["damaged_blocks"] == serde_json::json!([])
            && again["corrupt_needles"] == serde_json::json!([]))
    })
    .await?;

    // A block whose bytes changed with its checksums (a bad write that
    // checksummed what it wrote): a scrub cannot see it; a deep scrub finds
    // the one block that disagrees with its stripe's parity, and it is
    // rebuilt in place.
    let (stripe, block) = (5u64, 3u32);
    let node = placed[&(stripe, block)].clone();
    rewrite_with_checksums(
        &block_path(&cluster, &node, vid, &warm_after, stripe, block),
        10,
        Rewrite::NewFile,
    )?;
    let shallow = scrub(&cluster, false).await?;
    anyhow::ensure!(
        shallow["damaged_blocks"] == serde_json::json!([]),
        "{shallow}"
    );
    let deep = scrub(&cluster, true).await?;
    anyhow::ensure!(
        deep["damaged_blocks"]
            == serde_json::json!([{"volume": vid, "what": format!("{stripe}.{block}"), "node": node}]),
        "{deep}"
    );
    anyhow::ensure!(
        deep["stripes_verified"].as_u64() >= Some(stripes as u64),
        "{deep}"
    );
    healed(&cluster, &client, vid, &expected, &[&lost, &partner]).await?;
    let again = scrub(&cluster, true).await?;
    anyhow::ensure!(again["damaged_blocks"] == serde_json::json!([]), "{again}");

    // A rebuilder killed mid-block (paused once it has streamed the block's
    // data, before its checksum record): the target never holds part of
    // it, reads go on, and the next pass rebuilds it with a new rebuilder.
    let marker = cluster.data_dir.join("rebuild-paused");
    let marker = marker.to_str().context("path")?;
    cluster.kill_node("rebuilder")?;
    let _paused = cluster.restart_node_with(
        "rebuilder",
        &[
            ("HAYLOFT_PAUSE_AT", "rebuild-after-columns-1"),
            ("HAYLOFT_PAUSE_ONCE", marker),
        ],
    )?;
    let (stripe, block) = (6u64, 7u32);
    let node = placed[&(stripe, block)].clone();
    let path = block_path(&cluster, &node, vid, &warm_after, stripe, block);
    std::fs::remove_file(&path)?;
    let pid = paused_at(&cluster, "rebuild-after-columns-1")
        .await
        .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    let blocks_dir = path.parent().context("blocks dir")?.to_owned();
    anyhow::ensure!(!path.exists(), "a half-rebuilt block is in place");
    check_volume(&client, &router, &blobs, vid).await?;
    common::signal(pid as libc::pid_t, libc::SIGKILL);
    // The job stays in the directory, its failure said, for the next pass.
    wait_until("the failed rebuild job kept", HEAL_DEADLINE, || async {
        let status = repair_status(&client, &router).await?;
        Ok(status["jobs"].as_array().into_iter().flatten().any(|job| {
            job["volume"] == vid && job["stripe"] == stripe && job["last_error"].is_string()
        }))
    })
    .await?;
    let _rebuilder = cluster.restart_node("rebuilder")?;
    healed(&cluster, &client, vid, &expected, &[&lost, &partner]).await?;
    let strays: Vec<String> = std::fs::read_dir(&blocks_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !name.ends_with(".block"))
        .collect();
    anyhow::ensure!(strays.is_empty(), "left on {node}: {strays:?}");

    // Every node restarted: what was deleted stays deleted.
    for node in cluster.nodes()? {
        let id = node["id"].as_str().unwrap_or_default();
        if node["role"] == "f4-storage" && id != lost && id != partner {
            let id = id.to_owned();
            cluster.kill_node(&id)?;
            cluster.restart_node(&id)?;
        }
    }
    for id in &deleted_now {
        let (status, _) = fetch(&client, &router, id).await?;
        anyhow::ensure!(
            status == 404,
            "deleted {id} answered {status} after the restarts"
        );
    }
    check_volume(&client, &router, &blobs, vid).await?;

    // The emptied rack gets its node back: the balancer moves one block of
    // each stripe that had two in a rack onto it, removes the old copies,
    // and every stripe again has a rack per block.
    let _back = cluster.restart_node(&partner)?;
    wait_until("the rack rule restored", HEAL_DEADLINE, || async {
        let warm = volume(&client, &router, vid).await?["warm"].clone();
        let status = repair_status(&client, &router).await?;
        Ok(warm["tolerated_rack_losses"] == 4
            && status["placement_violations"] == serde_json::json!([]))
    })
    .await
    .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    let balanced = healed(&cluster, &client, vid, &expected, &[&lost]).await?;
    let now_placed = placement(&balanced);
    let mut moves = 0;
    for (place, node) in &placed {
        if now_placed[place] != *node {
            moves += 1;
            let old = block_path(&cluster, node, vid, &warm_after, place.0, place.1);
            anyhow::ensure!(
                !old.exists(),
                "the moved block's old copy stays: {}",
                old.display()
            );
        }
    }
    anyhow::ensure!(moves > 0, "nothing moved");
    check_volume(&client, &router, &blobs, vid).await?;

    // Every replica of a hot needle corrupt: an error on read, never
    // bytes, and the scrub names it unrecoverable.
    let doomed = blobs
        .iter()
        .find(|b| b.volume() == hot.volume() && b.id != hot.id && b.body.len() > 1000)
        .context("another hot BLOB")?;
    for replica in volume(&client, &router, doomed.volume()).await?["replicas"]
        .as_array()
        .context("replicas")?
    {
        flip_needle_byte(
            &cluster,
            &client,
            replica.as_str().context("replica")?,
            doomed,
        )
        .await?;
    }
    let (status, _) = fetch(&client, &router, &doomed.id).await?;
    anyhow::ensure!(
        status >= 500,
        "a needle corrupt everywhere answered {status}"
    );
    let found = scrub(&cluster, false).await?;
    anyhow::ensure!(
        found["unrecoverable"]
            == serde_json::json!([format!("{},{:x}", doomed.volume(), doomed.key())]),
        "{found}"
    );
    Ok(())
}

/// `hayloft scrub --json [--deep]`: its report (it exits non-zero when
/// something is unrecoverable, which the callers look at themselves).
async fn scrub(cluster: &Cluster, deep: bool) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new(common::hayloft_bin())
        .args(["scrub", "--json", "--router", &cluster.router])
        .args(deep.then_some("--deep"))
        .output()
        .await?;
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "hayloft scrub: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// How [`rewrite_with_checksums`] leaves the block file.
enum Rewrite {
    /// A new file renamed over it.
    NewFile,
    /// The same file, written over (what a node that has it open reads).
    InPlace,
}

/// Flips byte `at` of the block file's data and writes its checksum record
/// anew, so that every chunk still matches its CRC.
fn rewrite_with_checksums(path: &std::path::Path, at: usize, how: Rewrite) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let header = f4::BlockHeader::decode(&bytes[..f4::format::BLOCK_HEADER_SIZE])?;
    let start = f4::format::BLOCK_HEADER_SIZE;
    let end = start + usize::try_from(header.block_len_bytes)?;
    anyhow::ensure!(start + at < end, "byte {at} past the block's data");
    bytes[start + at] ^= 0x08;
    let record =
        coding::BlockChecksums::compute(header.geometry.chunk_size_bytes, &bytes[start..end])?
            .encode();
    bytes.truncate(end);
    bytes.extend_from_slice(&record);
    match how {
        Rewrite::NewFile => {
            let tmp = path.with_extension("rewritten");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, path)?;
        }
        Rewrite::InPlace => {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.write_all_at(&bytes, 0)?;
            file.set_len(bytes.len() as u64)?;
        }
    }
    Ok(())
}

/// Flips a byte in the data of `blob`'s needle in `store`'s replica.
async fn flip_needle_byte(
    cluster: &Cluster,
    client: &reqwest::Client,
    store: &str,
    blob: &Blob,
) -> anyhow::Result<()> {
    let vid = blob.volume();
    let page: Value = client
        .get(format!(
            "{}/volumes/{vid}/needles",
            cluster.node_url(store)?
        ))
        .send()
        .await?
        .json()
        .await?;
    let entry = page["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["key"] == format!("{:x}", blob.key()))
        .context("the needle in the replica's index")?;
    let offset = entry["offset"].as_u64().context("offset")?;
    let path = cluster
        .data_dir
        .join(store)
        .join(format!("volume-{vid:010}.data"));
    let mut bytes = std::fs::read(&path)?;
    bytes[offset as usize + 300] ^= 0x04;
    std::fs::write(&path, &bytes)?;
    Ok(())
}
