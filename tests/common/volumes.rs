//! Volumes and BLOBs of a running cluster, as the warm-tier and migration
//! tests see them: uploads until volumes lock, the volume list, deletes.

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::{Cluster, check_blob, fetch, random_body, sha256, upload};

/// Sizes of a small warm-tier cluster: 1 MiB volumes of BLOBs up to
/// 160 KiB, blocks of 16 KiB, so that a volume spans several stripes and
/// most BLOBs straddle blocks.
pub const SMALL_VOLUMES: &[&str] = &[
    "--volume-size",
    "1MiB",
    "--max-blob-size",
    "160KiB",
    "--block-size",
    "16KiB",
];

/// The content type `common::upload` stores.
pub const CONTENT_TYPE: &str = "application/octet-stream";

/// An uploaded BLOB.
#[derive(Clone, Debug)]
pub struct Blob {
    pub id: String,
    pub body: Vec<u8>,
    pub deleted: bool,
}

impl Blob {
    /// Reads the BLOB through the router and checks it byte for byte.
    pub async fn check(&self, client: &reqwest::Client, router: &str) -> anyhow::Result<()> {
        check_blob(
            client,
            router,
            &self.id,
            self.body.len(),
            &sha256(&self.body),
        )
        .await
    }

    pub fn volume(&self) -> u32 {
        self.id.split(',').next().unwrap().parse().unwrap()
    }

    pub fn key(&self) -> u64 {
        let rest = self.id.split(',').nth(1).unwrap();
        u64::from_str_radix(&rest[..rest.len() - 8], 16).unwrap()
    }
}

/// Every volume the router lists (`GET /admin/volumes`, page by page).
pub async fn volumes(client: &reqwest::Client, router: &str) -> anyhow::Result<Vec<Value>> {
    every_volume(client, &format!("{router}/admin/volumes")).await
}

/// Every volume of the paged listing at `url` (the router's
/// `/admin/volumes` or the directory's `/volumes`), in small pages so that
/// the tests cross page boundaries.
pub async fn every_volume(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<Value>> {
    haystack::api::every_page(
        |after: Option<u64>| async move {
            let mut request = client.get(url).query(&[("limit", 4)]);
            if let Some(after) = after {
                request = request.query(&[("after", after)]);
            }
            let response = request.send().await?;
            anyhow::ensure!(response.status() == 200, "{url}: {}", response.status());
            let page: Value = response.json().await?;
            let volumes = page["volumes"].as_array().cloned().context("volume page")?;
            Ok((volumes, page["next_after"].as_u64()))
        },
        || anyhow::anyhow!("{url}: pages do not advance"),
    )
    .await
}

pub async fn volume(client: &reqwest::Client, router: &str, vid: u32) -> anyhow::Result<Value> {
    volumes(client, router)
        .await?
        .into_iter()
        .find(|v| v["id"] == vid)
        .with_context(|| format!("no volume {vid}"))
}

/// The id of the first `locked` volume the router lists.
pub async fn locked_volume(client: &reqwest::Client, router: &str) -> anyhow::Result<u32> {
    let id = volumes(client, router)
        .await?
        .into_iter()
        .find(|v| v["state"] == "locked")
        .and_then(|v| v["id"].as_u64())
        .context("a locked volume")?;
    u32::try_from(id).context("a volume id over u32")
}

/// Flags to add to [`SMALL_VOLUMES`]: one writable volume at a time, locked
/// once idle for 2 s, and no migration on its own: a test fills one volume
/// and acts on it while it is hot, then migrates it when it chooses.
pub const ONE_IDLE_VOLUME: &[&str] = &[
    "--writable-volumes",
    "1",
    "--idle-lock-after",
    "2s",
    "--warm-after",
    "1d",
];

/// Uploads `count` BLOBs of `size` bytes, seeded from `seed` on; under
/// [`ONE_IDLE_VOLUME`] they all land in one volume (checked): that
/// volume's id, and the BLOBs.
pub async fn one_volume_of(
    client: &reqwest::Client,
    router: &str,
    seed: u64,
    count: u64,
    size: usize,
) -> anyhow::Result<(u32, Vec<Blob>)> {
    let mut blobs = Vec::new();
    for n in 0..count {
        let body = random_body(seed + n, size);
        let id = upload(client, router, body.clone()).await?;
        blobs.push(Blob {
            id,
            body,
            deleted: false,
        });
    }
    let vid = blobs.first().context("no BLOB")?.volume();
    anyhow::ensure!(blobs.iter().all(|b| b.volume() == vid), "{blobs:?}");
    Ok((vid, blobs))
}

/// Waits until volume `vid` is locked (at most 30 s).
pub async fn wait_locked(client: &reqwest::Client, router: &str, vid: u32) -> anyhow::Result<()> {
    super::wait_until(
        "the volume locked",
        std::time::Duration::from_secs(30),
        || async { Ok(volume(client, router, vid).await?["state"] == "locked") },
    )
    .await
}

/// Uploads BLOBs of 0 B to 150 KiB until `locked` volumes are locked;
/// returns every BLOB uploaded.
pub async fn fill(
    client: &reqwest::Client,
    router: &str,
    seed: u64,
    locked: usize,
) -> anyhow::Result<Vec<Blob>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut blobs = Vec::new();
    for n in 0.. {
        if n % 8 == 0 {
            let full = volumes(client, router)
                .await?
                .iter()
                .filter(|v| v["state"] == "locked")
                .count();
            if full >= locked {
                return Ok(blobs);
            }
        }
        let size = match n % 10 {
            0 => 0,
            1 => rng.random_range(1..64),
            _ => rng.random_range(1..150 << 10),
        };
        let body = random_body(seed * 100_000 + n, size);
        let id = upload(client, router, body.clone()).await?;
        blobs.push(Blob {
            id,
            body,
            deleted: false,
        });
        anyhow::ensure!(n < 400, "no volume locked after {n} uploads");
    }
    unreachable!()
}

pub async fn delete(client: &reqwest::Client, router: &str, id: &str) -> anyhow::Result<u16> {
    Ok(client
        .delete(format!("{router}/blobs/{id}"))
        .send()
        .await?
        .status()
        .as_u16())
}

/// `hayloft warm seal --volume VID --json`: its JSON answer, on exit 0.
pub async fn seal(cluster: &Cluster, vid: u32) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new(super::hayloft_bin())
        .args(["warm", "seal", "--json", "--volume", &vid.to_string()])
        .args(["--router", &cluster.router])
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "warm seal of {vid}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Every live BLOB of `vid` reads back byte for byte; every deleted one is
/// `404`.
pub async fn check_volume(
    client: &reqwest::Client,
    router: &str,
    blobs: &[Blob],
    vid: u32,
) -> anyhow::Result<()> {
    for blob in blobs.iter().filter(|b| b.volume() == vid) {
        if blob.deleted {
            let (status, _) = fetch(client, router, &blob.id).await?;
            anyhow::ensure!(status == 404, "deleted {} answered {status}", blob.id);
        } else {
            blob.check(client, router)
                .await
                .with_context(|| format!("reading {}", blob.id))?;
        }
    }
    Ok(())
}
