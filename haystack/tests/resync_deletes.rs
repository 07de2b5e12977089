//! A bulk sync at production sizes: a replica that missed a million
//! deletes (a 100 GiB volume of thumbnails has that many) takes them all
//! from its peer, page by page on the wire and a batch at a time on disk.
//! Real nodes on loopback ports.

mod node_common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haystack::client::StoreClient;
use haystack::file::{FileBackend, Storage, StorageBackend};
use haystack::service::{StoreNodeConfig, StoreNodeState};
use haystack::{Volume, VolumeOptions};

const VOLUME: u32 = 7;
const NEEDLES: u64 = 1_000_000;

/// Files whose syncs are skipped: only to build the replicas quickly (the
/// nodes under test open them with the real backend).
struct Unsynced(Arc<dyn Storage>);

impl Storage for Unsynced {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.0.write_vectored_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

struct UnsyncedBackend;

impl StorageBackend for UnsyncedBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(Unsynced(FileBackend.open(path, create)?)))
    }
}

async fn node(dir: &Path) -> (StoreNodeState, node_common::Served) {
    let mut config = StoreNodeConfig::new(dir);
    config.request_timeout_ms = 60_000;
    let state = StoreNodeState::open(config.clone(), Default::default())
        .await
        .expect("open");
    let served = node_common::serve(&state, config).await;
    (state, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_a_million_missed_deletes_from_its_peer() {
    let (source_dir, stale_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    // One locked volume of a million one-byte needles, copied to the stale
    // replica's node; then every needle deleted on the source.
    let keys: Vec<u64> = (1..=NEEDLES).collect();
    tokio::task::spawn_blocking({
        let (source, stale) = (source_dir.path().to_owned(), stale_dir.path().to_owned());
        let keys = keys.clone();
        move || {
            let v = Volume::create_with_backend(
                &source,
                VOLUME,
                VolumeOptions::default(),
                Arc::new(UnsyncedBackend),
            )
            .expect("create");
            for &key in &keys {
                v.append_needle(key, key as u32, "", &[key as u8])
                    .expect("append");
            }
            v.lock().expect("lock");
            for path in [v.data_path(), v.index_path()] {
                std::fs::copy(&path, stale.join(path.file_name().expect("name"))).expect("copy");
            }
            for batch in keys.chunks(50_000) {
                assert_eq!(
                    v.apply_peer_deletes(batch).expect("delete"),
                    batch.len() as u64
                );
            }
        }
    })
    .await
    .expect("build");

    let (_source, source_served) = node(source_dir.path()).await;
    let (stale, stale_served) = node(stale_dir.path()).await;
    let client = StoreClient::new(&stale_served.url).expect("client");
    assert_eq!(
        client
            .volume_status(VOLUME)
            .await
            .expect("status")
            .needle_count,
        NEEDLES
    );
    let started = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(300),
        client.sync_volume(VOLUME, &source_served.url, &[]),
    )
    .await
    .expect("a million deletes within five minutes")
    .expect("sync");
    eprintln!(
        "a million deletes resynced in {:?}: {report:?}",
        started.elapsed()
    );
    assert_eq!(report.deletes_applied, NEEDLES);
    let status = client.volume_status(VOLUME).await.expect("status");
    assert_eq!(status.needle_count, 0, "{status:?}");
    // Durable: the stale replica reopened from disk has every delete.
    stale_served.stop().await;
    drop(stale);
    let reopened =
        Volume::open(stale_dir.path(), VOLUME, VolumeOptions::default()).expect("reopen");
    assert_eq!(reopened.status().needle_count, 0);
    assert_eq!(reopened.deleted_keys().len() as u64, NEEDLES);
    source_served.stop().await;
}
