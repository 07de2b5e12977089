//! The redb directory on a full disk: a write fails with a clear error while
//! the disk is full, the directory recovers by itself once space returns
//! (redb poisons its `Database` after an IO error, so the backend must reopen
//! it), and no acknowledged state is lost.
//!
//! The full disk is a small tmpfs, which needs root (as in CI). Without the
//! permission to mount, the test fails, unless `HAYLOFT_ALLOW_TMPFS_SKIP=1`
//! is set (then it prints `SKIPPED` and why).

#[path = "../../tests/common/tmpfs.rs"]
mod tmpfs;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use router::directory::{Directory, KeyLease, NodeRegistration, NodeRole, RedbDirectory};
use tmpfs::Tmpfs;

fn registration(id: &str, rack: &str, address: String) -> NodeRegistration {
    NodeRegistration {
        id: id.to_owned(),
        role: NodeRole::Store,
        rack: rack.to_owned(),
        datacenter: "dc1".to_owned(),
        address,
    }
}

/// Writes zeros to `path` until the filesystem refuses with ENOSPC.
fn fill(path: &Path) {
    let mut file = File::create(path).expect("create junk file");
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match file.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the disk: unexpected error {e}"),
            }
        }
    }
    // Errors of the final flush are ENOSPC too; the disk is full either way.
    let _ = file.sync_all();
}

/// Everything the directory acknowledged, checked against a directory.
struct Acknowledged {
    nodes: Vec<String>,
    volume: u32,
    leases: Vec<KeyLease>,
}

impl Acknowledged {
    /// Removes the filler `junk`, then registers a node and takes a lease,
    /// both of which must now succeed, and records them.
    fn write_after_space_returned(&mut self, dir: &RedbDirectory, junk: &Path, now_ms: u64) {
        std::fs::remove_file(junk).expect("remove junk");
        dir.register_node(
            registration("after-full", "r9", "after:80".to_owned()),
            now_ms,
        )
        .expect("write after space returned");
        self.nodes.push("after-full".to_owned());
        self.leases.push(
            dir.lease_keys(self.volume, 10)
                .expect("lease after space returned"),
        );
    }

    fn check(&self, dir: &dyn Directory) {
        let listed: Vec<String> = dir
            .list_nodes()
            .expect("list nodes")
            .into_iter()
            .map(|n| n.id)
            .collect();
        for id in &self.nodes {
            assert!(listed.contains(id), "acknowledged node {id} lost");
        }
        dir.volume(self.volume).expect("acknowledged volume lost");
        // A new lease must lie above every acknowledged one, or keys would be
        // handed out twice.
        let highest = self.leases.iter().map(|l| l.end).max().expect("a lease");
        let lease = dir
            .lease_keys(self.volume, 1)
            .expect("lease after recovery");
        assert!(
            lease.start >= highest,
            "lease {lease:?} overlaps an acknowledged one (highest end {highest})"
        );
    }
}

/// A directory on `tmpfs` with three stores, a volume and a first lease
/// acknowledged, and the disk then filled: its data dir, the filler file,
/// the directory, and what it acknowledged.
fn full_directory(tmpfs: &Tmpfs) -> (PathBuf, PathBuf, RedbDirectory, Acknowledged) {
    let data_dir: PathBuf = tmpfs.path().join("directory");
    let junk = tmpfs.path().join("junk");
    let dir = RedbDirectory::open(&data_dir).expect("open");

    let mut ack = Acknowledged {
        nodes: Vec::new(),
        volume: 0,
        leases: Vec::new(),
    };
    for (id, rack) in [("store-a", "r1"), ("store-b", "r2"), ("store-c", "r3")] {
        dir.register_node(registration(id, rack, format!("{id}:80")), 1_000)
            .expect("register store");
        ack.nodes.push(id.to_owned());
    }
    ack.volume = dir.allocate_volume(1_000).expect("allocate").id;
    ack.leases
        .push(dir.lease_keys(ack.volume, 100).expect("first lease"));

    fill(&junk);
    (data_dir, junk, dir, ack)
}

#[test]
fn directory_recovers_after_the_disk_was_full() {
    let Some(tmpfs) = Tmpfs::mount_for("8m", "directory_recovers_after_the_disk_was_full") else {
        return;
    };
    let (data_dir, junk, dir, mut ack) = full_directory(&tmpfs);

    // Free pages inside the file may absorb a few writes; big records soon
    // need new ones, which the full disk refuses.
    let big_address = "x".repeat(64 * 1024);
    let mut failure = None;
    for i in 0..1_000 {
        let id = format!("filler-{i}");
        let result = dir
            .register_node(registration(&id, "r9", big_address.clone()), 2_000)
            .map(|_| ack.nodes.push(id))
            .and_then(|()| dir.lease_keys(ack.volume, 10).map(|l| ack.leases.push(l)));
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }
    let err = failure.expect("a directory write failed on the full disk");
    eprintln!("write on the full disk: {err} (status {})", err.status());
    assert!(
        err.is_storage_full(),
        "expected a storage-full error, got {err:?}"
    );
    assert_eq!(err.status(), http::StatusCode::INSUFFICIENT_STORAGE);

    // Still full: every answer is either a success (the backend may reuse
    // freed pages) or the same clear error, never a poisoned database.
    match dir.register_node(registration("while-full", "r9", big_address.clone()), 3_000) {
        Ok(_) => ack.nodes.push("while-full".to_owned()),
        Err(e) => assert!(
            e.is_storage_full(),
            "expected storage-full while still full, got {e:?}"
        ),
    }
    // Reads keep working on a full disk, and see every acknowledged node.
    let listed = dir
        .list_nodes()
        .unwrap_or_else(|e| panic!("reads must keep working on a full disk: {e:?}"));
    for id in &ack.nodes {
        assert!(
            listed.iter().any(|n| &n.id == id),
            "node {id} missing while full"
        );
    }

    // Space is back: writes succeed again without restarting anything.
    ack.write_after_space_returned(&dir, &junk, 4_000);
    ack.check(&dir);

    // And the file itself holds it all: reopen from scratch.
    drop(dir);
    let reopened = RedbDirectory::open(&data_dir).expect("reopen from scratch");
    ack.check(&reopened);
    drop(reopened);
    drop(tmpfs);
}

/// What one writer thread of the concurrent test got acknowledged.
#[derive(Default)]
struct ThreadAck {
    nodes: Vec<String>,
    leases: Vec<KeyLease>,
    volumes: Vec<u32>,
    refused: usize,
}

/// One writer of the concurrent test: a mix of every kind of directory write
/// on the full disk. Each answer must be a success or the clean storage-full
/// error (507); a panic (redb's `needs_recovery` assertion) fails the join.
fn concurrent_writer(dir: &RedbDirectory, thread: usize, volume: u32) -> ThreadAck {
    let big_address = "x".repeat(64 * 1024);
    let mut ack = ThreadAck::default();
    for i in 0..24 {
        let result = match i % 4 {
            0 => {
                let id = format!("t{thread}-n{i}");
                dir.register_node(registration(&id, "r9", big_address.clone()), 5_000)
                    .map(|_| ack.nodes.push(id))
            }
            1 => dir.heartbeat("store-a", 5_000 + i).map(|_| ()),
            2 => dir.lease_keys(volume, 10).map(|l| ack.leases.push(l)),
            _ => dir.allocate_volume(5_000).map(|v| ack.volumes.push(v.id)),
        };
        if let Err(e) = result {
            assert!(
                e.is_storage_full() && e.status() == http::StatusCode::INSUFFICIENT_STORAGE,
                "thread {thread} op {i}: expected success or storage-full, got {e:?}"
            );
            ack.refused += 1;
        }
    }
    ack
}

#[test]
fn concurrent_writes_on_a_full_disk_never_panic() {
    let Some(tmpfs) = Tmpfs::mount_for("8m", "concurrent_writes_on_a_full_disk_never_panic") else {
        return;
    };
    let (data_dir, junk, dir, mut ack) = full_directory(&tmpfs);

    // 16 writers at once, as 16 concurrent uploads drive the directory: when
    // one write's IO fails, redb poisons the shared `Database`, and a write
    // that was already waiting to begin must not commit on it (redb asserts).
    let mut volumes = vec![ack.volume];
    let mut refused = 0;
    let results: Vec<std::thread::Result<ThreadAck>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let dir = &dir;
                let volume = ack.volume;
                s.spawn(move || concurrent_writer(dir, t, volume))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut panics = Vec::new();
    for (t, result) in results.into_iter().enumerate() {
        match result {
            Ok(thread_ack) => {
                ack.nodes.extend(thread_ack.nodes);
                ack.leases.extend(thread_ack.leases);
                volumes.extend(thread_ack.volumes);
                refused += thread_ack.refused;
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panics.push(format!("thread {t}: {message}"));
            }
        }
    }
    assert!(panics.is_empty(), "writers panicked: {panics:#?}");
    eprintln!("concurrent writes on the full disk: {refused} refused with storage-full");
    assert!(refused > 0, "the full disk refused no write at all");

    // Space is back: the directory works again without a restart, and all
    // it acknowledged before and during the full disk is there.
    ack.write_after_space_returned(&dir, &junk, 6_000);
    let check = |d: &dyn Directory| {
        ack.check(d);
        for id in &volumes {
            d.volume(*id).expect("acknowledged volume lost");
        }
    };
    check(&dir);

    drop(dir);
    let reopened = RedbDirectory::open(&data_dir).expect("reopen from scratch");
    check(&reopened);
    drop(reopened);
    drop(tmpfs);
}
