//! Datacenters on one machine (`hayloft up --datacenters 3`, in one
//! process): each gets a cell of 14 racks, a backoff node and a rebuilder;
//! a warm volume lives whole in one datacenter's cell (its blocks and its
//! journal holders), the next one in the least loaded other, and a block
//! it loses is rebuilt there.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use common::volumes::{check_volume, fill, seal, volumes};
use common::{Cluster, http_client, wait_until};
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
    let nodes: Vec<Value> = client
        .get(format!("{router}/admin/nodes"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
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
        let members = warm["stripes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s.as_array().cloned().unwrap_or_default())
            .chain(
                warm["journal_holders"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
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
            let report: Value = client
                .post(format!("{router}/admin/repair"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::ensure!(report["problems"] == serde_json::json!([]), "{report}");
            Ok(std::fs::read(&path).is_ok_and(|bytes| bytes == original))
        },
    )
    .await
    .with_context(|| format!("log:\n{}", cluster.log_tail()))?;
    check_volume(&client, &router, &blobs, vid).await?;
    Ok(())
}
