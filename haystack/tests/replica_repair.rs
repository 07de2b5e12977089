//! Repair between store nodes, needle by needle: a damaged needle mended in
//! place from a peer, and a bulk sync that never lets a needle failing its
//! checks replace a good one. Real nodes on loopback ports; damage is a byte
//! flipped in a replica's data file on disk.

mod node_common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use bytes::Bytes;
use haystack::api::NeedleRef;
use haystack::client::{ClientError, StoreClient};
use haystack::format;
use haystack::service::{StoreNodeConfig, StoreNodeState};
use node_common::Served;

const VOLUME: u32 = 7;
const TEST_DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    url: String,
    client: StoreClient,
    state: StoreNodeState,
    served: Served,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = StoreNodeConfig::new(dir.path());
        config.request_timeout_ms = 10_000;
        config.server.shutdown_grace_ms = 2_000;
        let state = StoreNodeState::open(config.clone(), Default::default())
            .await
            .expect("open");
        let served = node_common::serve(&state, config).await;
        let url = served.url.clone();
        let client = StoreClient::new(&url).expect("client");
        Node {
            url,
            client,
            state,
            served,
            _dir: dir,
        }
    }

    /// Flips one byte of `key`'s data (past its header) in the data file.
    fn damage(&self, key: u64) {
        let volume = self.state.store().volume(VOLUME).expect("volume");
        let entry = volume
            .needle_entries(Some(key - 1), 1)
            .into_iter()
            .find(|e| e.key == key)
            .expect("needle present");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(volume.data_path())
            .expect("open data file");
        let at = entry.offset + format::NEEDLE_HEADER_SIZE as u64 + 8;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).expect("read");
        file.write_all_at(&[byte[0] ^ 0x40], at).expect("flip");
    }

    /// The bytes of `key`'s needle in the data file, as they lie on disk.
    fn needle_on_disk(&self, key: u64) -> Vec<u8> {
        let volume = self.state.store().volume(VOLUME).expect("volume");
        let entry = volume
            .needle_entries(Some(key - 1), 1)
            .into_iter()
            .find(|e| e.key == key)
            .expect("needle present");
        let file = std::fs::File::open(volume.data_path()).expect("open");
        let mut bytes = vec![0u8; entry.size_bytes as usize];
        file.read_exact_at(&mut bytes, entry.offset).expect("read");
        bytes
    }

    /// Whether `key`'s needle on disk passes every check.
    fn intact(&self, key: u64) -> bool {
        format::validate_needle(&self.needle_on_disk(key), VOLUME, 0).is_ok()
    }
}

fn cookie_for(key: u64) -> u32 {
    0x5eed_0000 ^ key as u32
}

fn data_for(key: u64) -> Bytes {
    Bytes::from(
        (0..1000 + key as usize * 37)
            .map(|i| (i as u64 * 31 + key) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Creates the volume on `node` with needles `1..=last`, writable still.
async fn fill_writable(node: &Node, last: u64) {
    node.client.create_volume(VOLUME).await.expect("create");
    for key in 1..=last {
        node.client
            .append_needle_bytes(VOLUME, key, cookie_for(key), "t/x", data_for(key))
            .await
            .expect("append");
    }
}

/// Creates the volume on `node` with needles `1..=last` and locks it.
async fn fill(node: &Node, last: u64) {
    fill_writable(node, last).await;
    node.client.lock_volume(VOLUME).await.expect("lock");
}

async fn read(node: &Node, key: u64) -> Result<Bytes, ClientError> {
    node.client
        .read_needle_bytes(VOLUME, key, cookie_for(key))
        .await
        .map(|n| n.data)
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_needle_is_mended_from_the_first_peer_with_a_good_copy() {
    bounded(async {
        let (a, b, c) = (
            Node::start().await,
            Node::start().await,
            Node::start().await,
        );
        for node in [&a, &b, &c] {
            fill(node, 10).await;
        }
        let peers = |nodes: &[&Node]| nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>();

        // Bad on a only: b's copy is written over it.
        a.damage(3);
        assert!(matches!(read(&a, 3).await, Err(ClientError::Corrupt(_))));
        let answer = a
            .client
            .repair_needle(VOLUME, 3, &peers(&[&b]))
            .await
            .expect("repair");
        assert_eq!(
            (answer.outcome.as_str(), answer.source),
            ("rewritten", Some(b.url.clone()))
        );
        assert_eq!(read(&a, 3).await.expect("mended"), data_for(3));
        assert_eq!(a.needle_on_disk(3), b.needle_on_disk(3));
        let again = a
            .client
            .repair_needle(VOLUME, 3, &peers(&[&b]))
            .await
            .expect("again");
        assert_eq!(again.outcome, "already_good");

        // Bad on a and b: b's copy is refused, c's taken.
        a.damage(5);
        b.damage(5);
        let answer = a
            .client
            .repair_needle(VOLUME, 5, &peers(&[&b, &c]))
            .await
            .expect("repair");
        assert_eq!(answer.source, Some(c.url.clone()));
        assert_eq!(read(&a, 5).await.expect("mended"), data_for(5));

        // Bad everywhere: 409 no_good_copy, nothing written.
        for node in [&a, &b, &c] {
            node.damage(6);
        }
        let before = a.needle_on_disk(6);
        let err = a
            .client
            .repair_needle(VOLUME, 6, &peers(&[&b, &c]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Status { status: 409, code, .. } if code == "no_good_copy"),
            "{err:?}"
        );
        assert_eq!(a.needle_on_disk(6), before);

        // A peer that cannot be asked is a 502, and nothing is written.
        a.damage(7);
        let before = a.needle_on_disk(7);
        let dead = vec!["http://127.0.0.1:1".to_owned(), b.url.clone()];
        let err = a.client.repair_needle(VOLUME, 7, &dead).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Status { status: 502, .. }),
            "{err:?}"
        );
        assert_eq!(a.needle_on_disk(7), before);

        // A delete the good copy carries is kept.
        b.client
            .delete_needle(VOLUME, 8, cookie_for(8))
            .await
            .expect("delete");
        a.damage(8);
        a.client
            .repair_needle(VOLUME, 8, &peers(&[&b]))
            .await
            .expect("repair");
        assert!(read(&a, 8).await.unwrap_err().is_not_found());
        assert!(a.intact(8));
        assert_eq!(
            a.client.deleted_keys(VOLUME).await.expect("deleted"),
            vec![8]
        );

        // The untouched needles are as they were.
        for key in [1, 2, 4, 9, 10] {
            assert_eq!(read(&a, key).await.expect("read"), data_for(key));
        }
        for node in [a, b, c] {
            node.served.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_takes_each_bad_needle_from_a_good_replica_and_reports_the_lost() {
    bounded(async {
        // a: the source, all 20 needles. b: the target, an earlier copy with
        // only 15 (so a copy is needed). c: another replica.
        let (a, b, c) = (
            Node::start().await,
            Node::start().await,
            Node::start().await,
        );
        fill(&a, 20).await;
        fill(&b, 15).await;
        fill(&c, 20).await;
        a.damage(2); // good on b and c: b keeps its own
        a.damage(4);
        b.damage(4); // good on c only
        for node in [&a, &b, &c] {
            node.damage(6); // good nowhere
        }
        b.damage(8); // bad on the target only: the source's good copy wins
        a.client
            .delete_needle(VOLUME, 10, cookie_for(10))
            .await
            .expect("delete");
        b.client
            .delete_needle(VOLUME, 11, cookie_for(11))
            .await
            .expect("delete");
        let source_before: Vec<Vec<u8>> = (1..=20).map(|k| a.needle_on_disk(k)).collect();
        let lost_bytes = a.needle_on_disk(6);

        let report = b
            .client
            .sync_volume(VOLUME, &a.url, std::slice::from_ref(&c.url))
            .await
            .expect("sync");
        assert_eq!(report.method, "copy");
        let needle = |key: u64| NeedleRef {
            key,
            cookie: Some(cookie_for(key)),
        };
        assert_eq!(report.source_damaged, vec![needle(2), needle(4), needle(6)]);
        assert_eq!(report.lost, vec![needle(6)]);
        assert!(!report.truncated);

        for key in 1..=20u64 {
            match key {
                6 => {
                    assert!(matches!(read(&b, key).await, Err(ClientError::Corrupt(_))));
                    assert_eq!(b.needle_on_disk(6), lost_bytes, "kept as the source had it");
                }
                10 | 11 => assert!(read(&b, key).await.unwrap_err().is_not_found(), "{key}"),
                _ => {
                    assert!(b.intact(key), "needle {key} on disk");
                    assert_eq!(read(&b, key).await.expect("read"), data_for(key), "{key}");
                }
            }
        }
        assert_eq!(
            b.client.deleted_keys(VOLUME).await.expect("deleted"),
            vec![10, 11]
        );
        // The source was only read.
        let source_after: Vec<Vec<u8>> = (1..=20).map(|k| a.needle_on_disk(k)).collect();
        assert_eq!(source_after, source_before);

        // Now b holds every needle of a: the next sync only catches up.
        a.client
            .delete_needle(VOLUME, 12, cookie_for(12))
            .await
            .expect("delete");
        let again = b
            .client
            .sync_volume(VOLUME, &a.url, &[])
            .await
            .expect("resync");
        assert_eq!(
            (again.method.as_str(), again.deletes_applied),
            ("catch_up", 1)
        );
        assert!(read(&b, 12).await.unwrap_err().is_not_found());
        for node in [a, b, c] {
            node.served.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_cannot_check_a_needle_installs_nothing() {
    bounded(async {
        let (a, b) = (Node::start().await, Node::start().await);
        fill(&a, 12).await;
        fill(&b, 6).await;
        a.damage(9); // b has no earlier copy of 9, and the only peer is down
        let before: Vec<Vec<u8>> = (1..=6).map(|k| b.needle_on_disk(k)).collect();
        let err = b
            .client
            .sync_volume(VOLUME, &a.url, &["http://127.0.0.1:1".to_owned()])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Status { status: 502, .. }),
            "{err:?}"
        );
        let status = b.client.volume_status(VOLUME).await.expect("status");
        assert_eq!(status.last_key, Some(6), "the earlier replica stays");
        let after: Vec<Vec<u8>> = (1..=6).map(|k| b.needle_on_disk(k)).collect();
        assert_eq!(after, before);
        for node in [a, b] {
            node.served.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletes_only_sync_takes_the_peers_deletes_and_no_data() {
    bounded(async {
        let (a, b, c) = (
            Node::start().await,
            Node::start().await,
            Node::start().await,
        );
        // The peer stays writable: deletes only grow, so it need not be locked.
        fill_writable(&a, 12).await;
        fill(&b, 6).await;
        for (node, key) in [(&a, 3), (&a, 5), (&a, 11), (&b, 2)] {
            node.client
                .delete_needle(VOLUME, key, cookie_for(key))
                .await
                .expect("delete");
        }
        // Bad input changes nothing: a malformed flag, a replica not held here.
        let url = format!("{}/volumes/{VOLUME}/sync", b.url);
        let sync_status = |query: Vec<(&'static str, String)>| {
            let request = reqwest::Client::new().post(&url).query(&query);
            async move { request.send().await.expect("send").status() }
        };
        let from = ("from", a.url.clone());
        let answer = sync_status(vec![from.clone(), ("deletes_only", "maybe".into())]).await;
        assert_eq!(answer, 400);
        let also = ("also", c.url.clone());
        let answer = sync_status(vec![from, ("deletes_only", "true".into()), also]).await;
        assert_eq!(answer, 400, "deletes_only takes no also");
        assert!(read(&b, 3).await.is_ok(), "a refused sync applied a delete");
        let err = c.client.sync_deletes(VOLUME, &a.url).await.unwrap_err();
        assert!(matches!(err, ClientError::UnknownVolume(_)), "{err:?}");

        let report = b.client.sync_deletes(VOLUME, &a.url).await.expect("sync");
        assert_eq!(
            (report.method.as_str(), report.deletes_applied),
            ("deletes", 2)
        );
        assert_eq!(report.status.last_key, Some(6), "no needle was copied");
        for key in 1..=6 {
            let deleted = [2, 3, 5].contains(&key);
            match read(&b, key).await {
                Ok(data) => assert!(!deleted && data == data_for(key), "key {key}"),
                Err(e) => assert!(deleted && e.is_not_found(), "key {key}: {e:?}"),
            }
        }
        assert!(read(&a, 2).await.is_ok(), "the peer is unchanged");
        for node in [a, b, c] {
            node.served.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_paged_and_only_an_empty_replica_is_removed() {
    bounded(async {
        let a = Node::start().await;
        fill(&a, 9).await;
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = a.client.needle_page(VOLUME, after, 4).await.expect("page");
            assert!(page.entries.len() <= 4);
            seen.extend(page.entries.iter().map(|e| e.key));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (1..=9).collect::<Vec<_>>());
        for limit in [0, 4097] {
            let err = a.client.needle_page(VOLUME, None, limit).await.unwrap_err();
            assert!(
                matches!(err, ClientError::BadRequest(_)),
                "{limit}: {err:?}"
            );
        }

        let err = a.client.remove_empty_volume(VOLUME).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Status { status: 409, code, .. } if code == "not_empty"),
            "{err:?}"
        );
        assert_eq!(read(&a, 1).await.expect("still there"), data_for(1));
        a.client.create_volume(8).await.expect("create");
        a.client.remove_empty_volume(8).await.expect("remove");
        assert!(matches!(
            a.client.volume_status(8).await,
            Err(ClientError::UnknownVolume(_))
        ));
        a.client
            .remove_empty_volume(8)
            .await
            .expect("absent is fine");
        a.served.stop().await;
    })
    .await;
}
