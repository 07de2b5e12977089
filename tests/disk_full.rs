//! A full disk under concurrent uploads: `hayloft up` with its data on a
//! small tmpfs. Uploads past the space are refused with clear JSON errors
//! (no reset, no panic), the process keeps serving, and every BLOB it
//! acknowledged reads back byte-identical while the disk is still full.
//!
//! Needs permission to mount a tmpfs; without it the test fails, unless
//! `HAYLOFT_ALLOW_TMPFS_SKIP=1` is set (then it prints `SKIPPED` and why).
//! `haystack/tests/enospc.rs` covers a full disk without privileges.

mod common;
#[path = "common/tmpfs.rs"]
mod tmpfs;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, check_blob, http_client, random_body, sha256};
use tmpfs::Tmpfs;
use tokio::sync::Mutex;

const UPLOADERS: usize = 16;
const BLOB_BYTES: usize = 200 * 1024;
/// Refusals in a row after which an uploader stops (the disk is full).
const REFUSALS_TO_STOP: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_uploads_clearly_and_keeps_every_acknowledged_blob_readable()
-> anyhow::Result<()> {
    let Some(disk) = Tmpfs::mount_for(
        "40m",
        "a_full_disk_refuses_uploads_clearly_and_keeps_every_acknowledged_blob_readable",
    ) else {
        return Ok(());
    };
    let mut cluster = Cluster::start_in(
        disk.path(),
        &["--volume-size", "4MiB", "--max-blob-size", "1MiB"],
    )
    .await?;
    let client = http_client();
    let stored = Arc::new(Mutex::new(Vec::new()));
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let mut uploaders = Vec::new();
    for uploader in 0..UPLOADERS {
        let (client, router) = (client.clone(), cluster.router.clone());
        let (stored, refusals) = (stored.clone(), refusals.clone());
        uploaders.push(tokio::spawn(async move {
            let mut in_a_row = 0;
            for i in 0..400u64 {
                let body = random_body((uploader as u64) << 32 | i, BLOB_BYTES);
                let digest = sha256(&body);
                let response = client
                    .post(format!("{router}/blobs"))
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("upload {uploader}/{i}: no answer: {e:?}"))?;
                let status = response.status().as_u16();
                let text = response.text().await?;
                if status == 201 {
                    let answer: serde_json::Value = serde_json::from_str(&text)?;
                    let id = answer["id"].as_str().unwrap_or_default().to_owned();
                    stored.lock().await.push((id, digest));
                    in_a_row = 0;
                    continue;
                }
                refusals.lock().await.push((status, text));
                in_a_row += 1;
                if in_a_row == REFUSALS_TO_STOP {
                    break;
                }
            }
            anyhow::Ok(())
        }));
    }
    for uploader in uploaders {
        uploader.await??;
    }
    let stored = stored.lock().await.clone();
    let refusals = refusals.lock().await.clone();
    assert!(
        stored.len() >= 20,
        "some uploads fit: {} stored",
        stored.len()
    );
    assert!(!refusals.is_empty(), "the disk filled up");
    for (status, text) in &refusals {
        assert!(
            matches!(status, 503 | 507),
            "a full disk answers 503 or 507, not {status}: {text}"
        );
        let body: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("refusal is JSON ({e}): {text}"));
        assert!(body["error"].is_string(), "{text}");
        assert!(
            !text.contains("panicked"),
            "no panic reaches a client: {text}"
        );
    }
    // Every acknowledged BLOB reads back, with the disk still full.
    for (id, digest) in &stored {
        check_blob(&client, &cluster.router, id, BLOB_BYTES, digest).await?;
    }
    let health = client
        .get(format!("{}/health", cluster.router))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    assert_eq!(health.status().as_u16(), 200);
    cluster.stop(libc::SIGTERM).await?;
    Ok(())
}
