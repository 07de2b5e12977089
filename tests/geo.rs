//! Datacenters on one machine (`hayloft up --datacenters 3`): each gets a
//! cell of 14 racks, a backoff node and a rebuilder; a warm volume lives in
//! one datacenter's cell (its blocks and five journal holders; three more
//! holders in another datacenter), the next one in the least loaded other,
//! and a block it loses is rebuilt there. The geo layer (copies, buddies
//! and their XOR in a third datacenter) serves a volume whose datacenter
//! is lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use common::volumes::{check_volume, delete, fill, seal, volumes};
use common::{Cluster, get_json, http_client, post_json, wait_until};
use serde_json::Value;

const ARGS: &[&str] = &[
    "--datacenters",
    "3",
    "--volume-size",
    "1MiB",
    "--max-blob-size",
    "160KiB",
    "--block-size",
    "8KiB",
    // Repairs only when asked, so the test sees what each one does.
    "--coordinate-interval",
    "1h",
    "--scrub-rate",
    "0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datacenter_has_a_cell_and_a_warm_volume_stays_in_one() -> anyhow::Result<()> {
    let cluster = Cluster::start(ARGS).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let nodes: Vec<Value> = get_json(&client, &format!("{router}/admin/nodes")).await?;
    let datacenter_of: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_owned(),
                n["datacenter"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for dc in ["dc-1", "dc-2", "dc-3"] {
        let of = |role: &str| -> Vec<&Value> {
            nodes
                .iter()
                .filter(|n| n["datacenter"] == dc && n["role"] == role)
                .collect()
        };
        let racks: BTreeSet<&str> = of("f4-storage")
            .iter()
            .filter_map(|n| n["rack"].as_str())
            .collect();
        anyhow::ensure!(racks.len() == 14, "{dc}: racks {racks:?}");
        anyhow::ensure!(of("backoff").len() == 1, "{dc}: no backoff node");
        anyhow::ensure!(of("rebuilder").len() == 1, "{dc}: no rebuilder");
    }

    let blobs = fill(&client, &router, 31, 2).await?;
    let locked: Vec<u32> = volumes(&client, &router)
        .await?
        .iter()
        .filter(|v| v["state"] == "locked")
        .filter_map(|v| v["id"].as_u64())
        .map(|id| id as u32)
        .take(2)
        .collect();
    anyhow::ensure!(locked.len() == 2, "locked: {locked:?}");
    let mut homes = Vec::new();
    let mut last = None;
    for &vid in &locked {
        let warm = seal(&cluster, vid).await?["volume"]["warm"].clone();
        let home = warm["datacenter"]
            .as_str()
            .context("datacenter")?
            .to_owned();
        // Blocks and the first five journal holders at home; three more
        // holders in another datacenter (the geo test checks those).
        let members = warm["stripes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s.as_array().cloned().unwrap_or_default())
            .chain(
                warm["journal_holders"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .take(5),
            );
        for node in members {
            let node = node.as_str().context("node")?;
            anyhow::ensure!(
                datacenter_of.get(node) == Some(&home),
                "volume {vid} lives in {home}, but {node} is in {:?}",
                datacenter_of.get(node)
            );
        }
        check_volume(&client, &router, &blobs, vid).await?;
        homes.push(home);
        last = Some((vid, warm));
    }
    anyhow::ensure!(
        homes[0] != homes[1],
        "both volumes went to {}: the second belongs in the less loaded cell",
        homes[0]
    );

    // A block of the second volume lost: a pass rebuilds it in place, in
    // its own datacenter.
    let (vid, warm) = last.context("a sealed volume")?;
    let node = warm["stripes"][0][3].as_str().context("node")?;
    let generation = warm["generation"].as_u64().context("generation")?;
    let path = cluster
        .data_dir
        .join(node)
        .join("blocks")
        .join(f4::block::block_file_name(vid, generation, 0, 3));
    let original = std::fs::read(&path)?;
    std::fs::remove_file(&path)?;
    check_volume(&client, &router, &blobs, vid).await?;
    wait_until(
        "the lost block rebuilt",
        Duration::from_secs(60),
        || async {
            let report = post_json(&client, &format!("{router}/admin/repair")).await?;
            anyhow::ensure!(report["problems"] == serde_json::json!([]), "{report}");
            Ok(std::fs::read(&path).is_ok_and(|bytes| bytes == original))
        },
    )
    .await
    .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    check_volume(&client, &router, &blobs, vid).await?;
    Ok(())
}

/// The geo layer, as separate processes: two warm volumes in two
/// datacenters each get a full copy in another, then become buddies whose
/// XOR lives in the third, and the copies go. With every node of the
/// first one's datacenter killed, each of its BLOBs reads back from its
/// buddy and the XOR, deletes keep working (on its remote journal
/// holders), and once the datacenter is back its own holders have every
/// one of them. Wiped and restarted empty, the datacenter gets every block
/// back, byte for byte, from the buddy and the XOR; so does the XOR's, from
/// the two buddies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_lost_is_read_from_the_buddy_and_the_xor() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(ARGS).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let mut blobs = fill(&client, &router, 37, 2).await?;
    let locked: Vec<u32> = volumes(&client, &router)
        .await?
        .iter()
        .filter(|v| v["state"] == "locked")
        .filter_map(|v| v["id"].as_u64())
        .map(|id| id as u32)
        .take(2)
        .collect();
    anyhow::ensure!(locked.len() == 2, "locked: {locked:?}");
    for &vid in &locked {
        seal(&cluster, vid).await?;
    }
    let (a, b) = (locked[0], locked[1]);

    // A pass copies each volume; a later one pairs them.
    let passes = std::sync::Mutex::new(Vec::new());
    wait_until(
        "the two volumes paired, their XOR warm, their copies gone",
        Duration::from_secs(120),
        || async {
            let report = post_json(&client, &format!("{router}/admin/migrate")).await?;
            passes
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(report["geo"].clone());
            let all = volumes(&client, &router).await?;
            let of = |vid: u32| all.iter().find(|v| v["id"] == vid).cloned();
            let (Some(va), Some(vb)) = (of(a), of(b)) else {
                anyhow::bail!("volumes {a} and {b} not listed");
            };
            let xor = va["geo"]["xor"].as_u64();
            let paired = va["geo"]["buddy"] == b
                && vb["geo"]["buddy"] == a
                && xor.is_some()
                && vb["geo"]["xor"].as_u64() == xor;
            let xor_warm = xor
                .and_then(|x| of(x as u32))
                .is_some_and(|x| x["state"] == "warm");
            let copies = all
                .iter()
                .filter(|v| v["geo"]["of"].as_array().is_some_and(|of| of.len() == 1))
                .count();
            Ok(paired && xor_warm && copies == 0 && va["geo"].get("copy").is_none())
        },
    )
    .await
    .with_context(|| format!("passes: {passes:#?}\nlog:\n{}", cluster.log_tail()))?;
    let passes = passes
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    // (The migrator's own passes run too: any pass may have made them.)
    anyhow::ensure!(
        passes.iter().any(|p| p["waiting_for_buddy"] == 2),
        "no pass saw both volumes with a copy, waiting for a buddy: {passes:#?}"
    );

    let nodes: Vec<Value> = get_json(&client, &format!("{router}/admin/nodes")).await?;
    let datacenter_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .and_then(|n| n["datacenter"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let record = common::volumes::volume(&client, &router, a).await?;
    let warm = &record["warm"];
    let home = warm["datacenter"]
        .as_str()
        .context("datacenter")?
        .to_owned();
    let generation = warm["generation"].as_u64().context("generation")?;
    let holders: Vec<String> = warm["journal_holders"]
        .as_array()
        .context("holders")?
        .iter()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    let remote: BTreeSet<String> = holders
        .iter()
        .map(|h| datacenter_of(h))
        .filter(|dc| *dc != home)
        .collect();
    anyhow::ensure!(
        holders.len() == 8 && remote.len() == 1,
        "volume {a} in {home}: holders {holders:?} (five at home, three in one other datacenter)"
    );

    // Every node of the home datacenter killed.
    // A datacenter's own nodes: its cell, backoff node and rebuilder.
    let cell_of = |dc: &str| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n["datacenter"] == dc)
            .filter(|n| {
                matches!(
                    n["role"].as_str(),
                    Some("f4-storage" | "backoff" | "rebuilder")
                )
            })
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect()
    };
    let lost = cell_of(&home);
    anyhow::ensure!(lost.len() == 16, "{home}: {lost:?}");
    for id in &lost {
        cluster.kill_node(id)?;
    }
    check_volume(&client, &router, &blobs, a)
        .await
        .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    check_volume(&client, &router, &blobs, b).await?;
    let metrics = client
        .get(format!("{router}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    anyhow::ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("hayloft_requests_total") && l.contains("tier=\"geo\"")),
        "no read was served by the geo layer:\n{metrics}"
    );
    let mut deleted = Vec::new();
    for blob in blobs
        .iter_mut()
        .filter(|b| b.volume() == a && !b.body.is_empty())
        .take(5)
    {
        let status = delete(&client, &router, &blob.id).await?;
        anyhow::ensure!(
            status == 204,
            "delete of {} in the outage: {status}",
            blob.id
        );
        blob.deleted = true;
        deleted.push(blob.key());
    }
    check_volume(&client, &router, &blobs, a).await?;

    // Racks of the other two datacenters lost too (none holding the
    // volume's remote index): each of the buddy's and the XOR's stripes
    // decodes with up to four of its fourteen blocks gone, so every BLOB
    // still reads back; with a fifth rack of the buddy's gone, a BLOB whose
    // range the buddy's data covers cannot be read: `503`, never bytes.
    let record_b = common::volumes::volume(&client, &router, b).await?;
    let home_b = record_b["warm"]["datacenter"]
        .as_str()
        .context("datacenter")?
        .to_owned();
    let xor = record["geo"]["xor"].as_u64().context("xor")? as u32;
    let record_x = common::volumes::volume(&client, &router, xor).await?;
    let home_x = record_x["warm"]["datacenter"]
        .as_str()
        .context("datacenter")?
        .to_owned();
    let geometry_b: f4::Geometry = serde_json::from_value(record_b["warm"]["geometry"].clone())?;
    let layout_b = geometry_b.layout()?;
    let len_b = record_b["warm"]["geometry"]["volume_len_bytes"]
        .as_u64()
        .context("length")?;
    let racks_of = |dc: &str, count: usize| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n["datacenter"] == dc && n["role"] == "f4-storage")
            .filter(|n| !holders.iter().any(|h| n["id"] == h.as_str()))
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .take(count)
            .collect()
    };
    let (racks_b, racks_x) = (racks_of(&home_b, 5), racks_of(&home_x, 4));
    let index = cluster.node_url(
        holders
            .iter()
            .find(|h| datacenter_of(h) != home)
            .context("a remote holder")?,
    )?;
    anyhow::ensure!(
        racks_b.len() == 5 && racks_x.len() == 4,
        "{racks_b:?} {racks_x:?}"
    );
    let cases: [(&str, &[String], bool); 3] = [
        ("four racks of the buddy's datacenter", &racks_b[..4], true),
        ("and four of the XOR's", &racks_x, true),
        ("and a fifth of the buddy's", &racks_b[4..], false),
    ];
    let mut killed = Vec::new();
    for (case, racks, readable) in cases {
        for id in racks {
            cluster.kill_node(id)?;
            killed.push(id.clone());
        }
        let mut unreadable = 0;
        for blob in blobs
            .iter()
            .filter(|blob| blob.volume() == a && !blob.deleted)
        {
            let (status, body) = common::fetch(&client, &router, &blob.id).await?;
            // Where the needle lies in the volume's data, from a remote
            // holder's index.
            let url = format!("{index}/volumes/{a}/{generation}/keys/{:x}", blob.key());
            let entry: Value = get_json(&client, &url).await?;
            let offset = entry["offset"].as_u64().context("offset")?;
            let size = entry["size_bytes"].as_u64().context("size")?;
            // The buddy's part of the range: read straight from its blocks'
            // nodes, or decoded (only while a stripe lacks four at most).
            let buddy_part = size.min(len_b.saturating_sub(offset));
            let lost_in_buddy: Vec<Value> = if buddy_part == 0 {
                Vec::new()
            } else {
                layout_b
                    .segments(offset, buddy_part)?
                    .into_iter()
                    .map(|s| record_b["warm"]["stripes"][s.stripe as usize][s.block].clone())
                    .filter(|node| killed.iter().any(|k| node == k.as_str()))
                    .collect()
            };
            let expected = if readable || lost_in_buddy.is_empty() {
                200
            } else {
                503
            };
            anyhow::ensure!(
                status == expected,
                "{case}: {} at {offset} (the buddy's blocks lost there: {lost_in_buddy:?}) \
                 answered {status}",
                blob.id
            );
            anyhow::ensure!(
                status != 200 || body == blob.body,
                "{case}: {} answered 200 with other bytes",
                blob.id
            );
            unreadable += usize::from(status == 503);
        }
        anyhow::ensure!(readable || unreadable > 0, "{case}: every BLOB read");
        if readable {
            check_volume(&client, &router, &blobs, b).await?;
        } else {
            for blob in blobs.iter().filter(|blob| blob.volume() == b) {
                let (status, body) = common::fetch(&client, &router, &blob.id).await?;
                anyhow::ensure!(
                    status == 503 || (status == 200 && body == blob.body),
                    "{case}: {} of the buddy answered {status}",
                    blob.id
                );
            }
        }
    }

    // Back: its own holders merge the deletes they missed.
    let mut restarted = Vec::new();
    for id in killed.iter().chain(&lost) {
        restarted.push(cluster.restart_node(id)?);
    }
    wait_until(
        "the home holders fresh again",
        Duration::from_secs(60),
        || async {
            let record = common::volumes::volume(&client, &router, a).await?;
            Ok(record["warm"]["stale_holders"]
                .as_array()
                .is_none_or(|s| s.is_empty()))
        },
    )
    .await
    .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    for holder in holders.iter().filter(|h| datacenter_of(h) == home) {
        let url = cluster.node_url(holder)?;
        for key in &deleted {
            let status = client
                .get(format!("{url}/volumes/{a}/{generation}/keys/{key:x}"))
                .send()
                .await?
                .status();
            anyhow::ensure!(status == 410, "{holder}: key {key:x} answered {status}");
        }
    }
    check_volume(&client, &router, &blobs, a).await?;

    // Wiped and back empty: every block of its volume rebuilt from the
    // buddy and the XOR, byte for byte what it was; then the XOR's
    // datacenter, its blocks rebuilt from the two buddies.
    drop(restarted);
    wipe_and_rebuild(&cluster, &client, &lost, a, warm).await?;
    check_volume(&client, &router, &blobs, a).await?;
    // Its index back on its home holders (they merge it from the remote
    // ones), before the XOR's datacenter, which may hold those, goes.
    wait_until(
        "the home holders fresh again",
        Duration::from_secs(60),
        || async {
            post_json(&client, &format!("{router}/admin/repair")).await?;
            let record = common::volumes::volume(&client, &router, a).await?;
            let holders = &record["warm"]["journal_holders"];
            let stale = &record["warm"]["stale_holders"];
            let mut fresh = 0;
            for holder in holders.as_array().into_iter().flatten() {
                let id = holder.as_str().unwrap_or_default();
                let url = cluster.node_url(id)?;
                let described = client
                    .get(format!("{url}/volumes/{a}/{generation}"))
                    .send()
                    .await?;
                fresh += usize::from(described.status().is_success());
            }
            Ok(stale.as_array().is_none_or(|s| s.is_empty()) && fresh == 8)
        },
    )
    .await
    .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    let lost_x = cell_of(&home_x);
    wipe_and_rebuild(&cluster, &client, &lost_x, xor, &record_x["warm"]).await?;
    check_volume(&client, &router, &blobs, a).await?;
    check_volume(&client, &router, &blobs, b).await?;
    Ok(())
}

/// Kills the nodes `lost` (a datacenter's), wipes their data directories
/// and restarts them empty; then runs repair passes until every block of
/// warm volume `vid` (its record `warm`) is back on disk, byte for byte
/// what it was.
async fn wipe_and_rebuild(
    cluster: &Cluster,
    client: &reqwest::Client,
    lost: &[String],
    vid: u32,
    warm: &Value,
) -> anyhow::Result<()> {
    let router = &cluster.router;
    let generation = warm["generation"].as_u64().context("generation")?;
    let data_dir = &cluster.data_dir;
    let block_files: Vec<(std::path::PathBuf, Vec<u8>)> = warm["stripes"]
        .as_array()
        .context("stripes")?
        .iter()
        .enumerate()
        .flat_map(|(stripe, nodes)| {
            let nodes = nodes.as_array().cloned().unwrap_or_default();
            nodes.into_iter().enumerate().map(move |(block, node)| {
                let node = node.as_str().unwrap_or_default().to_owned();
                let name = f4::block::block_file_name(vid, generation, stripe as u64, block as u32);
                data_dir.join(node).join("blocks").join(name)
            })
        })
        .map(|path| Ok((path.clone(), std::fs::read(&path)?)))
        .collect::<anyhow::Result<_>>()?;
    for id in lost {
        cluster.kill_node(id)?;
        let dir = data_dir.join(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let mut restarted = Vec::new();
    for id in lost {
        restarted.push(cluster.restart_node(id)?);
    }
    anyhow::ensure!(
        block_files.iter().all(|(path, _)| !path.exists()),
        "the datacenter was not wiped"
    );
    wait_until(
        &format!("every block of volume {vid} rebuilt in its wiped datacenter"),
        Duration::from_secs(120),
        || async {
            post_json(client, &format!("{router}/admin/repair")).await?;
            Ok(block_files
                .iter()
                .all(|(path, bytes)| std::fs::read(path).is_ok_and(|now| now == *bytes)))
        },
    )
    .await
    .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    drop(restarted);
    Ok(())
}
