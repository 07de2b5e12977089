//! Direct reads on real processes (`hayloft up --spawn`): a smart client
//! looks a volume up through the router and reads straight from its store
//! nodes, which check the cookie and serve only under their read lease; a
//! replica that missed a delete never serves the deleted BLOB, not even
//! right after it restarts; a volume that turned warm is read through the
//! router; `hayloft get --direct` returns exactly the stored bytes either
//! way.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::volumes::{Blob, ONE_IDLE_VOLUME, SMALL_VOLUMES, one_volume_of, volume, wait_locked};
use common::{Cluster, get_json, http_client, wait_until};
use serde_json::Value;

/// `GET {node}/direct/volumes/{vid}/needles/{key}?cookie=C` of `blob` (with
/// `cookie` instead of its own, if given): status and body.
async fn direct(
    client: &reqwest::Client,
    node: &str,
    blob: &Blob,
    cookie: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let own = &blob.id[blob.id.len() - 8..];
    let url = format!(
        "{node}/direct/volumes/{}/needles/{:x}?cookie={}",
        blob.volume(),
        blob.key(),
        cookie.unwrap_or(own)
    );
    let response = client.get(url).send().await?;
    Ok((response.status().as_u16(), response.bytes().await?.to_vec()))
}

/// `hayloft get --direct ID --router R`: its stdout, on success.
async fn get_direct(cluster: &Cluster, id: &str) -> anyhow::Result<Vec<u8>> {
    let output = tokio::process::Command::new(common::hayloft_bin())
        .args(["get", "--direct", id, "--router", &cluster.router])
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "hayloft get --direct {id}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// The nodes `GET /volumes/{vid}/locations` names, as `(id, url)`.
async fn locations(
    client: &reqwest::Client,
    router: &str,
    vid: u32,
) -> anyhow::Result<(Value, Vec<(String, String)>)> {
    let answer: Value = get_json(client, &format!("{router}/volumes/{vid}/locations")).await?;
    let nodes = answer["locations"]
        .as_array()
        .context("locations")?
        .iter()
        .map(|l| {
            Ok((
                l["node"].as_str().context("node")?.to_owned(),
                l["url"].as_str().context("url")?.to_owned(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((answer, nodes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reads_honour_cookies_deletes_leases_and_the_warm_tier() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(&[SMALL_VOLUMES, ONE_IDLE_VOLUME].concat()).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let (vid, blobs) = one_volume_of(&client, &router, 41_000, 4, 9_000).await?;

    // Every fresh replica serves the BLOB, once its lease names the volume.
    let (answer, nodes) = locations(&client, &router, vid).await?;
    anyhow::ensure!(nodes.len() == 3, "locations of a writable volume: {answer}");
    for (_, url) in &nodes {
        wait_until(
            "a read lease naming the volume",
            Duration::from_secs(10),
            || async { Ok(direct(&client, url, &blobs[0], None).await?.0 == 200) },
        )
        .await?;
        let (status, body) = direct(&client, url, &blobs[0], None).await?;
        anyhow::ensure!(status == 200 && body == blobs[0].body, "{url}: {status}");
        // A wrong cookie is a 404, as through the router.
        let (status, _) = direct(&client, url, &blobs[0], Some("0badc0de")).await?;
        anyhow::ensure!(status == 404, "{url} with a wrong cookie: {status}");
    }
    anyhow::ensure!(get_direct(&cluster, &blobs[0].id).await? == blobs[0].body);
    for bad in ["x", "99999999999"] {
        let status = client
            .get(format!("{router}/volumes/{bad}/locations"))
            .send()
            .await?
            .status();
        anyhow::ensure!(status == 400, "locations of {bad}: {status}");
    }

    // A delete every replica took: 404 everywhere.
    let status = common::volumes::delete(&client, &router, &blobs[1].id).await?;
    anyhow::ensure!(status == 204, "delete: {status}");
    for (_, url) in &nodes {
        let (status, _) = direct(&client, url, &blobs[1], None).await?;
        anyhow::ensure!(status == 404, "{url} after the delete: {status}");
    }

    // A delete one replica missed (it was down): once back, that replica
    // refuses the BLOB (no lease, then a lease without the volume), and
    // after its resync it answers 404; never 200.
    let (missing, missing_url) = nodes[0].clone();
    cluster.kill_node(&missing)?;
    let status = common::volumes::delete(&client, &router, &blobs[2].id).await?;
    anyhow::ensure!(status == 204, "delete with {missing} down: {status}");
    let stale = volume(&client, &router, vid).await?;
    anyhow::ensure!(
        stale["missed_deletes"]
            .as_array()
            .is_some_and(|m| m.iter().any(|n| n == missing.as_str())),
        "{missing} not marked as having missed the delete: {stale}"
    );
    let _restarted = cluster.restart_node(&missing)?;
    let missing_url = cluster.node_url(&missing).unwrap_or(missing_url);
    let answers = std::sync::Mutex::new(std::collections::BTreeSet::new());
    wait_until(
        "the resynced replica's 404",
        Duration::from_secs(30),
        || async {
            let (status, _) = direct(&client, &missing_url, &blobs[2], None).await?;
            answers.lock().expect("answers").insert(status);
            Ok(status == 404)
        },
    )
    .await?;
    let answers = answers.into_inner().expect("answers");
    anyhow::ensure!(
        !answers.contains(&200),
        "{missing} served a BLOB deleted while it was down: {answers:?}"
    );
    anyhow::ensure!(
        answers.contains(&409),
        "{missing} was never refused for lack of a lease: {answers:?}"
    );
    anyhow::ensure!(get_direct(&cluster, &blobs[3].id).await? == blobs[3].body);

    // Warm: no location; a direct read of a former replica is refused, and
    // the smart client reads through the router.
    wait_locked(&client, &router, vid).await?;
    let answer = client
        .post(format!("{router}/admin/volumes/{vid}/migrate"))
        .send()
        .await?;
    anyhow::ensure!(
        answer.status() == 200,
        "migrating: {}",
        answer.text().await?
    );
    let (answer, warm_nodes) = locations(&client, &router, vid).await?;
    anyhow::ensure!(
        answer["state"] == "warm" && warm_nodes.is_empty(),
        "locations of a warm volume: {answer}"
    );
    for (_, url) in nodes.iter().skip(1) {
        let (status, _) = direct(&client, url, &blobs[3], None).await?;
        anyhow::ensure!(status != 200, "{url} served a warm volume directly");
    }
    for blob in [&blobs[0], &blobs[3]] {
        anyhow::ensure!(get_direct(&cluster, &blob.id).await? == blob.body);
    }
    let (status, _) = common::fetch(&client, &router, &blobs[2].id).await?;
    anyhow::ensure!(status == 404, "deleted BLOB after the migration: {status}");
    Ok(())
}
