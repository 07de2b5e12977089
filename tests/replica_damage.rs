//! Damaged needles on real store nodes (`hayloft up`, one process): bytes
//! flipped in the stores' data files on disk, then reads through the router,
//! the repair loop, and every copy of every BLOB checked on disk afterwards.
//!
//! The first test is the reproduction: a different BLOB damaged on
//! each replica (each still has two good copies). Before the fix, the corrupt
//! reads marked whole replicas stale and bulk syncs copied the bad needles
//! over the good ones, leaving one good copy; and a replica marked stale for
//! one bad needle was skipped for every needle, so a read answered 503.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use common::volumes::every_volume;
use common::{Cluster, check_blob, fetch, http_client, random_body, sha256, upload, wait_until};
use haystack::format;

/// Fast repair passes, so the tests wait seconds, not minutes.
const ARGS: &[&str] = &["--repair-interval", "300ms"];

/// Where one copy of a needle lies on disk.
#[derive(Clone, Debug)]
struct Copy {
    path: PathBuf,
    offset: u64,
    size: u64,
}

/// `(volume, key)` of a BLOB id `VOLUME,KEYCOOKIE`.
fn volume_and_key(id: &str) -> (u32, u64) {
    let (volume, rest) = id.split_once(',').expect("comma");
    let key = u64::from_str_radix(&rest[..rest.len() - 8], 16).expect("hex key");
    (volume.parse().expect("volume"), key)
}

/// Every needle copy in every store's data files, by `(volume, key)` and
/// store, found by walking each file's needle headers.
fn copies_on_disk(data_dir: &Path) -> anyhow::Result<Copies> {
    let mut copies = Copies::new();
    for store in ["store-1", "store-2", "store-3"] {
        for entry in std::fs::read_dir(data_dir.join(store))? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(volume) = name
                .strip_prefix("volume-")
                .and_then(|n| n.strip_suffix(".data"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            let mut offset = format::SUPERBLOCK_SIZE;
            while offset + format::NEEDLE_HEADER_SIZE as u64 <= len {
                let mut header = [0u8; format::NEEDLE_HEADER_SIZE];
                file.read_exact_at(&mut header, offset)?;
                let header = format::decode_needle_header(&header, volume, offset)
                    .with_context(|| format!("{} at {offset}", path.display()))?;
                let size = header.size_bytes();
                copies.entry((volume, header.key)).or_default().insert(
                    store.to_owned(),
                    Copy {
                        path: path.clone(),
                        offset,
                        size,
                    },
                );
                offset += size;
            }
        }
    }
    Ok(copies)
}

/// The bytes of one copy as they lie on disk.
fn read_copy(copy: &Copy) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(&copy.path)?;
    let mut bytes = vec![0u8; copy.size as usize];
    file.read_exact_at(&mut bytes, copy.offset)?;
    Ok(bytes)
}

/// Flips one byte `at` bytes into a copy.
fn flip(copy: &Copy, at: u64) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy.path)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, copy.offset + at)?;
    file.write_all_at(&[byte[0] ^ 0x10], copy.offset + at)?;
    Ok(())
}

/// A byte inside the data of a needle (past header and content type).
const IN_DATA: u64 = 200;
/// A reserved byte of the needle header: decoding the header fails.
const IN_HEADER: u64 = 18;

/// Checks that each of `blobs` has exactly three copies on disk (where
/// `copies`, found before any damage, says they lie), each passing every
/// check and holding the uploaded bytes.
type Copies = BTreeMap<(u32, u64), BTreeMap<String, Copy>>;

fn check_every_copy(copies: &Copies, blobs: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    for (id, body) in blobs {
        let (volume, key) = volume_and_key(id);
        let held = copies
            .get(&(volume, key))
            .with_context(|| format!("{id}: no copy"))?;
        anyhow::ensure!(held.len() == 3, "{id}: {} copies on disk", held.len());
        for (store, copy) in held {
            let bytes = read_copy(copy)?;
            let (header, data_crc) = format::validate_needle(&bytes, volume, copy.offset)
                .with_context(|| format!("{id} on {store} fails its checks"))?;
            anyhow::ensure!(!header.deleted(), "{id} on {store} is deleted");
            anyhow::ensure!(
                data_crc == crc32fast::hash(body),
                "{id} on {store}: other bytes"
            );
        }
    }
    Ok(())
}

/// The damaged-needle records, as the router's admin route shows them.
async fn damaged_records(cluster: &Cluster) -> anyhow::Result<Vec<serde_json::Value>> {
    let response = http_client()
        .get(format!("{}/admin/damaged-needles", cluster.router))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "admin/damaged-needles: {}",
        response.status()
    );
    let page: serde_json::Value = response.json().await?;
    page["needles"].as_array().cloned().context("needles")
}

async fn uploads(
    cluster: &Cluster,
    count: u64,
    size: usize,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let client = http_client();
    let mut blobs = Vec::new();
    for n in 0..count {
        let body = random_body(1_000 + n, size);
        let id = upload(&client, &cluster.router, body.clone()).await?;
        blobs.push((id, body));
    }
    Ok(blobs)
}

async fn metric(cluster: &Cluster, name: &str) -> anyhow::Result<f64> {
    let text = http_client()
        .get(format!("{}/metrics", cluster.router))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_needle_damaged_on_one_replica_is_mended_from_a_good_copy() -> anyhow::Result<()> {
    let cluster = Cluster::start(ARGS).await?;
    let client = http_client();

    // The run: six BLOBs of 20 KB, BLOB n damaged on store-n.
    let blobs = uploads(&cluster, 6, 20_000).await?;
    let copies = copies_on_disk(&cluster.data_dir)?;
    for (n, (id, _)) in blobs.iter().take(3).enumerate() {
        let store = format!("store-{}", n + 1);
        flip(&copies[&volume_and_key(id)][&store], IN_DATA)?;
    }
    // And ten more, each damaged on one replica in turn.
    let more = uploads(&cluster, 10, 20_000).await?;
    let copies = copies_on_disk(&cluster.data_dir)?; // damage is in data only
    for (n, (id, _)) in more.iter().enumerate() {
        let store = format!("store-{}", n % 3 + 1);
        flip(&copies[&volume_and_key(id)][&store], IN_DATA)?;
    }
    let all: Vec<(String, Vec<u8>)> = blobs.into_iter().chain(more).collect();

    // Reads start at a rotating replica, so three reads in a row of a BLOB
    // start once at each: every damaged copy is read, and every read must
    // answer the right bytes from a good copy.
    for (id, body) in &all {
        for _ in 0..3 {
            check_blob(&client, &cluster.router, id, body.len(), &sha256(body)).await?;
        }
    }
    assert!(
        metric(&cluster, "hayloft_damaged_needles_total").await? >= 13.0,
        "each damaged copy read is counted"
    );
    // Nothing was marked stale for a needle: every replica stays readable.
    let directory = cluster.node_url("directory")?;
    let volumes = every_volume(&http_client(), &format!("{directory}/volumes")).await?;
    for volume in &volumes {
        assert_eq!(volume["stale_replicas"], serde_json::json!([]), "{volume}");
    }

    wait_until(
        "every damaged copy mended",
        Duration::from_secs(60),
        || async { Ok(damaged_records(&cluster).await?.is_empty()) },
    )
    .await?;
    check_every_copy(&copies, &all)?;
    for (id, body) in &all {
        check_blob(&client, &cluster.router, id, body.len(), &sha256(body)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_damaged_on_every_replica_is_an_error_never_bytes_and_reported_lost()
-> anyhow::Result<()> {
    let cluster = Cluster::start(ARGS).await?;
    let client = http_client();
    let blobs = uploads(&cluster, 3, 20_000).await?;
    let copies = copies_on_disk(&cluster.data_dir)?;
    let (data_damaged, header_damaged, intact) = (&blobs[0], &blobs[1], &blobs[2]);
    for store in ["store-1", "store-2", "store-3"] {
        flip(&copies[&volume_and_key(&data_damaged.0)][store], IN_DATA)?;
        flip(
            &copies[&volume_and_key(&header_damaged.0)][store],
            IN_HEADER,
        )?;
    }

    let unavailable = |status: u16, body: &[u8], what: &str| -> anyhow::Result<()> {
        anyhow::ensure!(status == 503, "{what} answered {status}");
        let error: serde_json::Value = serde_json::from_slice(body)?;
        anyhow::ensure!(error["error"] == "unavailable", "{what}: {error}");
        Ok(())
    };
    for (id, _) in [data_damaged, header_damaged] {
        let (status, body) = fetch(&client, &cluster.router, id).await?;
        unavailable(status, &body, &format!("GET {id}"))?;
        let ranged = client
            .get(format!("{}/blobs/{id}", cluster.router))
            .header("range", "bytes=10-99")
            .send()
            .await?;
        let status = ranged.status().as_u16();
        unavailable(status, &ranged.bytes().await?, &format!("Range {id}"))?;
    }
    // HEAD reads only the needle's header (docs/ARCHITECTURE.md): a damaged
    // header is an error; damaged data is found by the GET, which never
    // answers bytes.
    let head = client
        .head(format!("{}/blobs/{}", cluster.router, header_damaged.0))
        .send()
        .await?;
    assert_eq!(
        head.status(),
        503,
        "HEAD of a BLOB whose header is damaged everywhere"
    );
    check_blob(
        &client,
        &cluster.router,
        &intact.0,
        intact.1.len(),
        &sha256(&intact.1),
    )
    .await?;

    // Every replica is asked, none has a good copy: both are reported lost,
    // by BLOB id.
    wait_until(
        "both BLOBs reported lost",
        Duration::from_secs(60),
        || async {
            let records = damaged_records(&cluster).await?;
            let lost: Vec<&str> = records
                .iter()
                .filter(|r| r["lost"] == true)
                .filter_map(|r| r["blob_id"].as_str())
                .collect();
            Ok(
                lost.contains(&data_damaged.0.as_str())
                    && lost.contains(&header_damaged.0.as_str()),
            )
        },
    )
    .await?;
    // Nothing else was touched, and the damaged bytes are still refused.
    check_every_copy(&copies, std::slice::from_ref(intact))?;
    let (status, body) = fetch(&client, &cluster.router, &data_damaged.0).await?;
    unavailable(status, &body, "GET after repair passes")?;
    Ok(())
}
