//! The warm tier on real processes (`hayloft up --spawn`: 3 store nodes, a
//! cell of 14 f4 storage nodes in 14 racks, a backoff node): volumes sealed
//! with `hayloft warm seal`, then read through the router while blocks are
//! deleted, corrupted or their nodes killed; warm deletes with a journal
//! holder down, folds and restarts; bad input to every new endpoint.
//!
//! Blocks are tiny (`--block-size 16KiB`) so that a 1 MiB volume spans
//! several stripes and most BLOBs straddle blocks.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use common::volumes::{
    Blob, CONTENT_TYPE, SMALL_VOLUMES, check_volume, delete, fill, locked_volume, seal, volume,
    volumes,
};
use common::{Cluster, http_client, paused_at, wait_until};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::Value;

/// [`SMALL_VOLUMES`], folds after three tombstones, a quick repair loop;
/// no background scrub and one coordinator pass only (at start), so that
/// the blocks these tests damage stay damaged while reads meet them
/// (`tests/heal.rs` tests the repairs).
fn args() -> Vec<&'static str> {
    [
        SMALL_VOLUMES,
        &[
            "--fold-tombstones",
            "3",
            "--repair-interval",
            "300ms",
            "--scrub-rate",
            "0",
            "--coordinate-interval",
            "1h",
        ],
    ]
    .concat()
}
/// Every BLOB of `blobs` in volume `vid` reads back as expected: live ones
/// byte-identical (whole, HEAD, a range), deleted ones `404`.
async fn check_all(
    client: &reqwest::Client,
    router: &str,
    blobs: &[Blob],
    vid: u32,
) -> anyhow::Result<()> {
    check_volume(client, router, blobs, vid).await?;
    for blob in blobs.iter().filter(|b| b.volume() == vid && !b.deleted) {
        let head = client
            .head(format!("{router}/blobs/{}", blob.id))
            .send()
            .await?;
        anyhow::ensure!(head.status() == 200, "HEAD {}: {}", blob.id, head.status());
        let length = head
            .headers()
            .get("content-length")
            .context("HEAD length")?;
        anyhow::ensure!(
            length.to_str()? == blob.body.len().to_string(),
            "HEAD {}",
            blob.id
        );
        if blob.body.len() > 20 {
            let (from, to) = (blob.body.len() / 3, blob.body.len() - 7);
            let range = client
                .get(format!("{router}/blobs/{}", blob.id))
                .header("range", format!("bytes={from}-{to}"))
                .send()
                .await?;
            anyhow::ensure!(range.status() == 206, "range of {}", blob.id);
            let bytes = range.bytes().await?;
            anyhow::ensure!(bytes[..] == blob.body[from..=to], "range of {}", blob.id);
        }
    }
    Ok(())
}

/// Where the data of a BLOB starts: `(stripe, block)` of its first byte.
async fn block_of(
    client: &reqwest::Client,
    cluster: &Cluster,
    warm: &Value,
    blob: &Blob,
) -> anyhow::Result<(u64, u32, String)> {
    let holder = warm["journal_holders"][0].as_str().context("holder")?;
    let generation = warm["generation"].as_u64().context("generation")?;
    let url = format!(
        "{}/volumes/{}/{generation}/keys/{:x}",
        cluster.node_url(holder)?,
        blob.volume(),
        blob.key()
    );
    let entry: Value = client.get(url).send().await?.json().await?;
    let offset = entry["offset"].as_u64().context("offset")?;
    let block_size = warm["geometry"]["block_size_bytes"]
        .as_u64()
        .context("block size")?;
    let stripe_len = block_size * 10;
    let stripe = offset / stripe_len;
    let block = ((offset % stripe_len) / block_size) as u32;
    let node = warm["stripes"][stripe as usize][block as usize]
        .as_str()
        .context("node")?
        .to_owned();
    Ok((stripe, block, node))
}

/// The file of a block on its node.
fn block_path(cluster: &Cluster, warm: &Value, vid: u32, stripe: u64, block: u32) -> PathBuf {
    let node = warm["stripes"][stripe as usize][block as usize]
        .as_str()
        .unwrap();
    let generation = warm["generation"].as_u64().unwrap();
    cluster.data_dir.join(node).join("blocks").join(format!(
        "volume-{vid:010}.g{generation:016x}.s{stripe:06}.b{block:02}.block"
    ))
}

/// Flips one byte in every `step` of the block file at `path`'s data (its
/// header and checksum record left alone); returns the file as it was.
fn corrupt(path: &std::path::Path, step: usize, mask: u8) -> anyhow::Result<Vec<u8>> {
    let saved = std::fs::read(path)?;
    let mut bytes = saved.clone();
    for at in (80..bytes.len() - 64).step_by(step) {
        bytes[at] ^= mask;
    }
    std::fs::write(path, &bytes)?;
    Ok(saved)
}

/// Moves block files aside (and back, on drop).
struct Lost(Vec<PathBuf>);

impl Lost {
    fn blocks(paths: Vec<PathBuf>) -> anyhow::Result<Lost> {
        for path in &paths {
            std::fs::rename(path, path.with_extension("lost"))
                .with_context(|| format!("moving {}", path.display()))?;
        }
        Ok(Lost(paths))
    }
}

impl Drop for Lost {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::rename(path.with_extension("lost"), path);
        }
    }
}

fn damaged_blocks(volume: &Value) -> Vec<(u64, u64)> {
    volume["warm"]["damaged_blocks"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|d| (d["stripe"].as_u64().unwrap(), d["block"].as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// A storage node's read batch (`POST /batch`) answers each entry as its
/// single route does, and refuses a malformed body whole.
async fn batch_answers_like_single_routes(
    client: &reqwest::Client,
    cluster: &Cluster,
    warm: &Value,
    blob: &Blob,
) -> anyhow::Result<()> {
    use f4::api::{BlockId, RangeRead};
    use f4::batch::{BatchAnswer, BatchRead, decode_answers, encode_request};
    use f4::client::KeyLookup;

    let vid = blob.volume();
    let generation = warm["generation"].as_u64().context("generation")?;
    let geometry: f4::Geometry = serde_json::from_value(warm["geometry"].clone())?;
    let holder = cluster.node_url(warm["journal_holders"][0].as_str().context("holder")?)?;
    let entry: f4::format::IndexEntry = client
        .get(format!(
            "{holder}/volumes/{vid}/{generation}/keys/{:x}",
            blob.key()
        ))
        .send()
        .await?
        .json()
        .await?;
    let (stripe, block, node) = block_of(client, cluster, warm, blob).await?;
    let node = cluster.node_url(&node)?;
    let offset = entry.offset % geometry.block_size_bytes;
    let range = RangeRead {
        block: BlockId {
            volume: vid,
            generation,
            stripe,
            block,
        },
        geometry,
        offset,
        len: u64::from(entry.size_bytes).min(geometry.block_size_bytes - offset),
    };
    let single = client
        .post(format!("{node}/blocks/read"))
        .json(&range)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let send = |url: String, reads: Vec<BatchRead>| async move {
        let answer = client
            .post(format!("{url}/batch"))
            .body(encode_request(&reads))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        anyhow::Ok(decode_answers(answer, &reads)?)
    };
    let lookup = |volume: u32, key: u64| BatchRead::Lookup {
        volume,
        generation,
        key,
    };
    let missing_block = RangeRead {
        block: BlockId {
            generation: generation + 1,
            ..range.block
        },
        ..range
    };
    let answers = send(
        node.clone(),
        vec![BatchRead::Range(range), BatchRead::Range(missing_block)],
    )
    .await?;
    anyhow::ensure!(
        answers[0] == BatchAnswer::Data(single),
        "range: {:?}",
        answers[0]
    );
    anyhow::ensure!(
        matches!(&answers[1], BatchAnswer::Error { status: 404, code, .. } if code == "block_not_found"),
        "missing block: {:?}",
        answers[1]
    );
    let answers = send(
        holder.clone(),
        vec![
            lookup(vid, blob.key()),
            lookup(vid, u64::MAX - 1),
            lookup(9999, 1),
        ],
    )
    .await?;
    anyhow::ensure!(
        answers
            == vec![
                BatchAnswer::Lookup(KeyLookup::Live(entry)),
                BatchAnswer::Lookup(KeyLookup::NotFound),
                answers[2].clone(),
            ]
            && matches!(&answers[2], BatchAnswer::Error { status: 404, code, .. } if code == "unknown_volume"),
        "lookups: {answers:?}"
    );
    // Malformed: garbage, no entries, an unknown kind.
    let mut unknown_kind = encode_request(&[lookup(vid, 1)]).to_vec();
    unknown_kind[12] = 7;
    for body in [
        b"F4RB garbage".to_vec(),
        encode_request(&[]).to_vec(),
        unknown_kind,
    ] {
        let status = client
            .post(format!("{holder}/batch"))
            .body(body)
            .send()
            .await?
            .status();
        anyhow::ensure!(status == 400, "a malformed batch answered {status}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_volumes_serve_every_live_blob_through_lost_and_corrupt_blocks() -> anyhow::Result<()>
{
    let cluster = Cluster::start_spawned(&args()).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let mut blobs = fill(&client, &router, 7, 2).await?;
    let locked: Vec<u32> = volumes(&client, &router)
        .await?
        .iter()
        .filter(|v| v["state"] == "locked")
        .map(|v| v["id"].as_u64().unwrap() as u32)
        .collect();
    // Some BLOBs deleted before sealing: dropped, and 404 afterwards.
    for (n, blob) in blobs.iter_mut().enumerate() {
        if locked.contains(&blob.volume()) && n % 5 == 2 {
            anyhow::ensure!(delete(&client, &router, &blob.id).await? == 204);
            blob.deleted = true;
        }
    }
    let (a, b) = tokio::join!(seal(&cluster, locked[0]), seal(&cluster, locked[1]));
    let sealed = [a?, b?];
    for (report, vid) in sealed.iter().zip(&locked) {
        let live: Vec<&Blob> = blobs
            .iter()
            .filter(|b| b.volume() == *vid && !b.deleted)
            .collect();
        anyhow::ensure!(report["needles"] == live.len(), "{report}");
        anyhow::ensure!(report["volume"]["state"] == "warm");
        anyhow::ensure!(report["retired_replicas"] == 3, "{report}");
        // No dead byte: the sealed data is exactly the live needles.
        let live_bytes: u64 = live
            .iter()
            .map(|b| haystack::format::needle_size_bytes(CONTENT_TYPE.len(), b.body.len() as u64))
            .sum();
        let warm = &report["volume"]["warm"];
        anyhow::ensure!(
            warm["geometry"]["volume_len_bytes"] == live_bytes,
            "sealed {} bytes, live needles are {live_bytes}",
            warm["geometry"]["volume_len_bytes"]
        );
        anyhow::ensure!(warm["tolerated_rack_losses"] == 4);
        for store in ["store-1", "store-2", "store-3"] {
            let data = cluster
                .data_dir
                .join(store)
                .join(format!("volume-{vid:010}.data"));
            anyhow::ensure!(!data.exists(), "{} survived the seal", data.display());
        }
        check_all(&client, &router, &blobs, *vid).await?;
    }

    let vid = locked[0];
    let warm = volume(&client, &router, vid).await?["warm"].clone();
    let first_live = blobs
        .iter()
        .find(|b| b.volume() == vid && !b.deleted && !b.body.is_empty())
        .context("a live BLOB")?;
    batch_answers_like_single_routes(&client, &cluster, &warm, first_live).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut live: Vec<Blob> = blobs
        .iter()
        .filter(|b| b.volume() == vid && !b.deleted && !b.body.is_empty())
        .cloned()
        .collect();
    live.shuffle(&mut rng);
    // One to four blocks lost, always the BLOB's own among them.
    for (n, blob) in live.iter().take(12).enumerate() {
        let (stripe, block, _) = block_of(&client, &cluster, &warm, blob).await?;
        let mut others: Vec<u32> = (0..14).filter(|b| *b != block).collect();
        others.shuffle(&mut rng);
        let lost: Vec<u32> = std::iter::once(block)
            .chain(others.into_iter().take(n % 4))
            .collect();
        let _lost = Lost::blocks(
            lost.iter()
                .map(|b| block_path(&cluster, &warm, vid, stripe, *b))
                .collect(),
        )?;
        blob.check(&client, &router)
            .await
            .with_context(|| format!("{} with blocks {lost:?} of stripe {stripe} lost", blob.id))?;
    }
    // Five lost: a clean 503, never bytes.
    let blob = &live[0];
    let (stripe, block, _) = block_of(&client, &cluster, &warm, blob).await?;
    let lost: Vec<u32> = std::iter::once(block)
        .chain((0..14).filter(|b| *b != block).take(4))
        .collect();
    {
        let _lost = Lost::blocks(
            lost.iter()
                .map(|b| block_path(&cluster, &warm, vid, stripe, *b))
                .collect(),
        )?;
        let response = client
            .get(format!("{router}/blobs/{}", blob.id))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 503, "five lost: {}", response.status());
        let error: Value = response.json().await?;
        anyhow::ensure!(error["error"] == "unavailable", "{error}");
    }

    // Corrupt bytes inside the BLOB's data block, then inside a parity
    // block of the same stripe with the data block gone too.
    let (stripe, block, _) = block_of(&client, &cluster, &warm, blob).await?;
    let data_path = block_path(&cluster, &warm, vid, stripe, block);
    let saved = corrupt(&data_path, 997, 0x5a)?;
    blob.check(&client, &router).await?;
    anyhow::ensure!(
        damaged_blocks(&volume(&client, &router, vid).await?).contains(&(stripe, u64::from(block))),
        "the corrupt block was not reported"
    );
    std::fs::write(&data_path, &saved)?;
    let parity_path = block_path(&cluster, &warm, vid, stripe, 10);
    let parity = corrupt(&parity_path, 499, 0xa5)?;
    {
        // The backoff node asks ten blocks in stripe order, the first parity
        // block among them; but if one of the ten is slower than the hedge
        // delay (a busy machine), a hedge read may complete the ten before
        // the corrupt block answers. Every read must be right, and within a
        // few the corrupt block is seen and reported.
        let _lost = Lost::blocks(vec![data_path.clone()])?;
        let mut reported = false;
        for _ in 0..20 {
            blob.check(&client, &router).await?;
            if damaged_blocks(&volume(&client, &router, vid).await?).contains(&(stripe, 10)) {
                reported = true;
                break;
            }
        }
        anyhow::ensure!(reported, "the corrupt parity block was not reported");
    }
    std::fs::write(&parity_path, &parity)?;

    // Four storage nodes killed, the one holding a BLOB's data among them:
    // every live BLOB still reads back.
    let (_, _, holder) = block_of(&client, &cluster, &warm, blob).await?;
    let mut victims = vec![holder.clone()];
    for n in 1..=14 {
        let id = format!("f4-{n}");
        if victims.len() < 4 && id != holder {
            victims.push(id);
        }
    }
    for victim in &victims {
        cluster.kill_node(victim)?;
    }
    check_all(&client, &router, &blobs, vid).await?;
    for victim in &victims {
        cluster.restart_node(victim)?;
    }
    check_all(&client, &router, &blobs, locked[1]).await?;
    Ok(())
}

/// Blocks of more than one of the sealing node's 1 MiB encoder columns:
/// its runs of needles cover whole columns (a small needle at a column's
/// end read twice, one over 128 KiB gathered across), and BLOBs deleted
/// before the seal leave gaps in the source's data file. Every live BLOB
/// reads back byte for byte, every deleted one is a `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_of_several_encoder_columns_seal_byte_for_byte() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[
        "--volume-size",
        "16MiB",
        "--max-blob-size",
        "160KiB",
        "--block-size",
        "4MiB",
        "--writable-volumes",
        "1",
    ])
    .await?;
    let client = http_client();
    let router = &cluster.router;
    let mut blobs = fill(&client, router, 29, 1).await?;
    let vid = locked_volume(&client, router).await?;
    for blob in blobs
        .iter_mut()
        .filter(|b| b.volume() == vid)
        .skip(3)
        .step_by(7)
    {
        anyhow::ensure!(delete(&client, router, &blob.id).await? == 204);
        blob.deleted = true;
    }
    seal(&cluster, vid).await?;
    let block =
        volume(&client, router, vid).await?["warm"]["geometry"]["block_size_bytes"].as_u64();
    anyhow::ensure!(
        block.is_some_and(|b| b > 1 << 20),
        "blocks of {block:?} bytes: one column each"
    );
    check_volume(&client, router, &blobs, vid).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_deletes_stay_deleted_through_holder_loss_folds_and_restarts() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_spawned(&args()).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let mut blobs = fill(&client, &router, 21, 1).await?;
    let vid = locked_volume(&client, &router).await?;

    // A delete racing the flip. A second router, whose entries last a
    // minute, reads a BLOB of the volume before the seal: it takes the
    // volume for hot until the seal has every router read the flip, and
    // the seal holds just before that (`migrate-draining`) while the BLOB
    // is deleted through the first router, which reads the volume warm.
    let (_second, second) = cluster.start_router_with("router-2", |config| {
        config.insert("directory_cache_ttl_ms".into(), 60_000.into());
    })?;
    let racer = blobs
        .iter()
        .rposition(|b| b.volume() == vid)
        .context("a BLOB")?;
    blobs[racer].check(&client, &second).await?;
    let release = cluster.data_dir.join("release-draining");
    cluster.kill_node("router")?;
    let _held = cluster.restart_node_with(
        "router",
        &[
            ("HAYLOFT_PAUSE_AT", "migrate-draining"),
            ("HAYLOFT_PAUSE_MS", "60000"),
            ("HAYLOFT_PAUSE_RELEASE", release.to_str().context("path")?),
        ],
    )?;
    let race = async {
        paused_at(&cluster, "migrate-draining").await?;
        let deleted = delete(&client, &router, &blobs[racer].id).await;
        let read = client
            .get(format!("{second}/blobs/{}", blobs[racer].id))
            .send()
            .await;
        std::fs::write(&release, b"")?;
        anyhow::ensure!(deleted? == 204, "the delete during the flip");
        let status = read?.status();
        anyhow::ensure!(
            status == 404,
            "a router that had not read the flip: {status}"
        );
        Ok(())
    };
    let (sealed, raced) = tokio::join!(seal(&cluster, vid), race);
    sealed?;
    raced?;
    blobs[racer].deleted = true;
    let warm = volume(&client, &router, vid).await?["warm"].clone();
    let holders: Vec<String> = warm["journal_holders"]
        .as_array()
        .context("holders")?
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    anyhow::ensure!(holders.len() == 5);

    // A wrong cookie: 404, and nothing written.
    let live = blobs
        .iter()
        .find(|b| b.volume() == vid)
        .context("a BLOB")?
        .clone();
    let cookie_at = live.id.len() - 8;
    let wrong = format!(
        "{}{:08x}",
        &live.id[..cookie_at],
        u32::from_str_radix(&live.id[cookie_at..], 16)? ^ 1
    );
    anyhow::ensure!(delete(&client, &router, &wrong).await? == 404);
    live.check(&client, &router).await?;

    // One holder down during four deletes (a fold on the others after
    // three): every delete acknowledged, the holder marked stale.
    cluster.kill_node(&holders[0])?;
    for blob in blobs
        .iter_mut()
        .filter(|b| b.volume() == vid)
        .skip(1)
        .step_by(3)
        .take(4)
    {
        anyhow::ensure!(
            delete(&client, &router, &blob.id).await? == 204,
            "{}",
            blob.id
        );
        blob.deleted = true;
    }
    let stale = volume(&client, &router, vid).await?["warm"]["stale_holders"].clone();
    anyhow::ensure!(
        stale == serde_json::json!([holders[0]]),
        "stale holders {stale}"
    );
    check_all(&client, &router, &blobs, vid)
        .await
        .context("with a holder down")?;

    // Back, it merges the others' journals and is fresh again; with every
    // other holder down, it alone answers, and the deletes hold.
    cluster.restart_node(&holders[0])?;
    wait_until("the holder merges", Duration::from_secs(60), || async {
        let v = volume(&client, &router, vid).await?;
        Ok(v["warm"]["stale_holders"] == serde_json::json!([]))
    })
    .await?;
    for holder in &holders[1..] {
        cluster.kill_node(holder)?;
    }
    check_all(&client, &router, &blobs, vid)
        .await
        .context("with only the merged holder up")?;
    for holder in &holders[1..] {
        cluster.restart_node(holder)?;
    }

    // A holder that misses a delete but still answers lookups (its
    // tombstone held past the router's replica timeout): marked stale, and
    // no read of the BLOB goes to it afterwards, not even from the second
    // router, which read the BLOB just before the delete (and whose entries
    // last a minute).
    cluster.kill_node(&holders[1])?;
    let _slow = cluster.restart_node_with(
        &holders[1],
        &[
            ("HAYLOFT_PAUSE_AT", "f4-tombstone"),
            ("HAYLOFT_PAUSE_MS", "600000"),
        ],
    )?;
    wait_until("the holder is up", Duration::from_secs(30), || async {
        let nodes: Value = common::get_json(&client, &format!("{router}/admin/nodes")).await?;
        Ok(nodes
            .as_array()
            .context("nodes")?
            .iter()
            .any(|n| n["id"] == holders[1].as_str() && n["state"] == "up"))
    })
    .await?;
    let missed = blobs
        .iter_mut()
        .filter(|b| b.volume() == vid && !b.deleted)
        .nth(2)
        .context("a live BLOB")?;
    missed.check(&client, &second).await?;
    anyhow::ensure!(delete(&client, &router, &missed.id).await? == 204);
    missed.deleted = true;
    for reader in [&router, &second].repeat(6) {
        let status = client
            .get(format!("{reader}/blobs/{}", missed.id))
            .send()
            .await?
            .status();
        anyhow::ensure!(
            status == 404,
            "a delete one holder missed, read at {reader}: {status}"
        );
    }
    let stale = volume(&client, &router, vid).await?["warm"]["stale_holders"].clone();
    anyhow::ensure!(
        stale == serde_json::json!([holders[1]]),
        "stale holders {stale}"
    );
    cluster.kill_node(&holders[1])?;
    cluster.restart_node(&holders[1])?;

    // Every node restarted: the deletes hold.
    cluster.restart().await?;
    check_all(&client, &router, &blobs, vid)
        .await
        .context("after a restart")?;
    bad_input_changes_nothing(&cluster, &client, vid, &warm).await
}

/// Bad input to every new endpoint: a clear 4xx, and nothing changed.
async fn bad_input_changes_nothing(
    cluster: &Cluster,
    client: &reqwest::Client,
    vid: u32,
    warm: &Value,
) -> anyhow::Result<()> {
    let router = &cluster.router;
    let node = cluster.node_url("f4-1")?;
    let backoff = cluster.node_url("backoff")?;
    let directory = cluster.node_url("directory")?;
    let generation = warm["generation"].as_u64().context("generation")?;
    let geometry = warm["geometry"].clone();
    let blocks_before: Value = client
        .get(format!("{node}/blocks"))
        .send()
        .await?
        .json()
        .await?;
    let volume_before = volume(client, router, vid).await?;

    let status = |response: reqwest::Response| response.status().as_u16();
    let expect = |what: &str, got: u16, want: u16| {
        anyhow::ensure!(got == want, "{what}: answered {got}, expected {want}");
        Ok(())
    };
    // Block writes: truncated, oversized, not the block the path names.
    let header_only = vec![0u8; 10];
    let got = client
        .put(format!("{node}/blocks/{vid}/{generation}/0/0"))
        .header("content-length", "100")
        .body(header_only)
        .send()
        .await;
    // A body shorter than its Content-Length either answers 400 or is cut.
    if let Ok(response) = got {
        expect("truncated block", status(response), 400)?;
    }
    let got = client
        .put(format!("{node}/blocks/{vid}/{generation}/0/0"))
        .header("content-length", (1u64 << 40).to_string())
        .body(Vec::new())
        .send()
        .await
        .map(status)
        .unwrap_or(413);
    expect("oversized block", got, 413)?;
    let real = std::fs::read(block_path(cluster, warm, vid, 0, 0))?;
    let got = client
        .put(format!("{node}/blocks/{vid}/{generation}/0/1"))
        .body(real)
        .send()
        .await?;
    expect("a block under another block's name", status(got), 409)?;
    // Range reads: unknown volume, past the block, wrong generation.
    let read = |volume: u32, generation: u64, offset: u64, len: u64| {
        serde_json::json!({"block": {"volume": volume, "generation": generation, "stripe": 0,
            "block": 0}, "geometry": geometry, "offset": offset, "len": len})
    };
    let post = |url: String, body: Value| client.post(url).json(&body).send();
    expect(
        "unknown volume",
        status(post(format!("{node}/blocks/read"), read(9999, generation, 0, 1)).await?),
        404,
    )?;
    let block_size = geometry["block_size_bytes"].as_u64().unwrap();
    let holder_of_0 = cluster.node_url(warm["stripes"][0][0].as_str().unwrap())?;
    expect(
        "range past the block",
        status(
            post(
                format!("{holder_of_0}/blocks/read"),
                read(vid, generation, block_size, 1),
            )
            .await?,
        ),
        400,
    )?;
    expect(
        "wrong generation",
        status(
            post(
                format!("{holder_of_0}/blocks/read"),
                read(vid, generation + 1, 0, 1),
            )
            .await?,
        ),
        404,
    )?;
    expect(
        "malformed read",
        status(
            client
                .post(format!("{node}/blocks/read"))
                .body("{")
                .header("content-type", "application/json")
                .send()
                .await?,
        ),
        400,
    )?;
    // Index and journal.
    let holder = cluster.node_url(warm["journal_holders"][0].as_str().unwrap())?;
    expect(
        "unknown volume key",
        status(
            client
                .get(format!("{holder}/volumes/9999/1/keys/1"))
                .send()
                .await?,
        ),
        404,
    )?;
    expect(
        "bad key",
        status(
            client
                .get(format!("{holder}/volumes/{vid}/{generation}/keys/XYZ"))
                .send()
                .await?,
        ),
        400,
    )?;
    expect(
        "tombstone of an unknown volume",
        status(
            post(
                format!("{holder}/volumes/9999/1/tombstones"),
                serde_json::json!({"keys": [1], "deleted_ms": 1}),
            )
            .await?,
        ),
        404,
    )?;
    for keys in [serde_json::json!([]), serde_json::json!(vec![1; 4097])] {
        expect(
            "tombstones: none, or too many",
            status(
                post(
                    format!("{holder}/volumes/{vid}/{generation}/tombstones"),
                    serde_json::json!({"keys": keys, "deleted_ms": 1}),
                )
                .await?,
            ),
            400,
        )?;
    }
    expect(
        "truncated index",
        status(
            client
                .put(format!("{holder}/volumes/77/1/index"))
                .body(vec![1u8; 30])
                .send()
                .await?,
        ),
        400,
    )?;
    // Backoff: a stripe without its sources, a range past the block.
    let reconstruct = |len: u64, sources: usize| {
        serde_json::json!({"block": {"volume": vid, "generation": generation, "stripe": 0, "block": 0},
            "geometry": geometry, "offset": 0, "len": len, "sources": vec![Value::Null; sources]})
    };
    expect(
        "backoff sources",
        status(post(format!("{backoff}/reconstruct"), reconstruct(1, 3)).await?),
        400,
    )?;
    expect(
        "backoff range",
        status(
            post(
                format!("{backoff}/reconstruct"),
                reconstruct(block_size + 1, 14),
            )
            .await?,
        ),
        400,
    )?;
    // Directory and router: seal steps of another generation, unknown and
    // writable volumes.
    let generation_body = serde_json::json!({"generation": generation + 7});
    expect(
        "commit of another generation",
        status(
            post(
                format!("{directory}/volumes/{vid}/seal/commit"),
                generation_body.clone(),
            )
            .await?,
        ),
        409,
    )?;
    expect(
        "abort of another generation",
        status(
            post(
                format!("{directory}/volumes/{vid}/seal/abort"),
                generation_body,
            )
            .await?,
        ),
        409,
    )?;
    expect(
        "seal of an unknown volume",
        status(
            client
                .post(format!("{router}/admin/volumes/9999/seal"))
                .send()
                .await?,
        ),
        400,
    )?;
    expect(
        "seal of a bad id",
        status(
            client
                .post(format!("{router}/admin/volumes/x/seal"))
                .send()
                .await?,
        ),
        400,
    )?;
    let writable = volumes(client, router)
        .await?
        .into_iter()
        .find(|v| v["state"] == "writable")
        .and_then(|v| v["id"].as_u64());
    if let Some(writable) = writable {
        expect(
            "seal of a writable volume",
            status(
                client
                    .post(format!("{router}/admin/volumes/{writable}/seal"))
                    .send()
                    .await?,
            ),
            400,
        )?;
    }

    let blocks_after: Value = client
        .get(format!("{node}/blocks"))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        blocks_before == blocks_after,
        "a bad request changed the blocks"
    );
    let volume_after = volume(client, router, vid).await?;
    anyhow::ensure!(
        volume_before["warm"]["generation"] == volume_after["warm"]["generation"]
            && volume_after["state"] == "warm",
        "a bad request changed the volume"
    );
    Ok(())
}
