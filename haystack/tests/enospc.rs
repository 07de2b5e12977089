//! A full disk through the storage seam, without privileges: a backend whose
//! writes fail with `ENOSPC` once a byte budget is spent, under a real store
//! node on a loopback port. The append that hits it gets a clear `507`, the
//! volume refuses further writes, every acknowledged needle reads back, and
//! once space returns a reopened store takes appends again with nothing lost.

mod node_common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use haystack::client::{ClientError, StoreClient};
use haystack::file::FileBackend;
use haystack::service::{StoreNodeConfig, StoreNodeState};
use haystack::{Storage, StorageBackend, Store, VolumeOptions};

/// Bytes that may still be written; below zero every write fails.
struct Disk {
    left: AtomicI64,
}

struct FullStorage {
    inner: Arc<dyn Storage>,
    disk: Arc<Disk>,
}

impl Storage for FullStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.disk.left.fetch_sub(buf.len() as i64, Ordering::SeqCst) < buf.len() as i64 {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let len: usize = bufs.iter().map(|buf| buf.len()).sum();
        if self.disk.left.fetch_sub(len as i64, Ordering::SeqCst) < len as i64 {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.inner.write_vectored_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

struct FullBackend(Arc<Disk>);

impl StorageBackend for FullBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(FullStorage {
            inner: FileBackend.open(path, create)?,
            disk: self.0.clone(),
        }))
    }
}

async fn node(dir: &Path, disk: Arc<Disk>) -> (node_common::Served, StoreClient) {
    let mut config = StoreNodeConfig::new(dir);
    config.server.shutdown_grace_ms = 2_000;
    let store =
        Store::open_with_backend(dir, VolumeOptions::default(), Arc::new(FullBackend(disk)))
            .expect("open store");
    let state = StoreNodeState::new(Arc::new(store), config.clone()).expect("state");
    let served = node_common::serve(&state, config).await;
    let client = StoreClient::new(&served.url).expect("client");
    (served, client)
}

fn data(key: u64) -> Bytes {
    Bytes::from(vec![key as u8; 10_000])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_507_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(Disk {
        left: AtomicI64::new(100_000),
    });
    let (served, client) = node(dir.path(), disk.clone()).await;
    client.create_volume(1).await.expect("create");
    let mut acknowledged = Vec::new();
    let refusal = loop {
        let key = acknowledged.len() as u64 + 1;
        assert!(key < 100, "the disk never filled");
        match client
            .append_needle_bytes(1, key, 7, "t/x", data(key))
            .await
        {
            Ok(_) => acknowledged.push(key),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&refusal, ClientError::Status { status: 507, code, message }
            if code == "io" && message.contains("no storage space")),
        "{refusal:?}"
    );
    assert!(!acknowledged.is_empty());
    // The volume refuses further writes, even with space back.
    disk.left.store(i64::MAX / 2, Ordering::SeqCst);
    let next = acknowledged.len() as u64 + 1;
    let again = client
        .append_needle_bytes(1, next, 7, "t/x", data(next))
        .await;
    assert!(matches!(again, Err(ClientError::ReadOnly(_))), "{again:?}");
    for key in &acknowledged {
        let needle = client
            .read_needle_bytes(1, *key, 7)
            .await
            .expect("acknowledged");
        assert_eq!(needle.data, data(*key));
    }
    served.stop().await;

    // Space is back: a reopened store keeps every acknowledged needle and
    // takes appends again.
    let (served, client) = node(dir.path(), disk).await;
    for key in &acknowledged {
        let needle = client
            .read_needle_bytes(1, *key, 7)
            .await
            .expect("after reopen");
        assert_eq!(needle.data, data(*key));
    }
    client
        .append_needle_bytes(1, next, 7, "t/x", data(next))
        .await
        .expect("append after space returned");
    served.stop().await;
}
