//! The rebuild worker against real storage nodes on loopback: lost blocks
//! restored byte for byte (data and parity, in place and on a new node), a
//! corrupt source replaced by another survivor (for the column it is
//! corrupt in only), too few survivors refused
//! with nothing left behind, and bad requests refused.

use std::path::{Path, PathBuf};

use f4::Geometry;
use f4::api::{RebuildRequest, RebuildTarget};
use f4::block::{WrittenBlock, block_file_name, encode_volume};
use f4::client::{ClientError, RebuilderClient, StorageClient};
use f4::node::NodeConfig;
use f4::rebuild::RebuilderConfig;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const VOLUME: u32 = 9;
const GENERATION: u64 = 4;
/// Storage nodes: one per block of a stripe, and a spare.
const NODES: usize = 15;

struct Cell {
    _dir: tempfile::TempDir,
    nodes: Vec<(String, PathBuf)>,
    rebuilder: RebuilderClient,
    geometry: Geometry,
    blocks: Vec<WrittenBlock>,
    cancel: CancellationToken,
}

impl Drop for Cell {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

/// A volume of two stripes (the second short) encoded into blocks, block
/// `b` of every stripe on node `b`, node 14 empty, and a rebuilder.
async fn cell() -> Cell {
    cell_of(1_299_990).await
}

/// [`cell`] of a volume of `len` bytes, in blocks of at most 100,000.
async fn cell_of(len: usize) -> Cell {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    let data_path = dir.path().join("warm.data");
    std::fs::write(&data_path, &data).expect("data");
    let geometry = Geometry::choose(data.len() as u64, 100_000, 10, 4, 4096).expect("geometry");
    let encoded = dir.path().join("encoded");
    std::fs::create_dir(&encoded).expect("dir");
    let blocks = encode_volume(&data_path, VOLUME, GENERATION, geometry, &encoded).expect("encode");
    let cancel = CancellationToken::new();
    let mut nodes = Vec::new();
    for n in 0..NODES {
        let data_dir = dir.path().join(format!("node-{n}"));
        let (listener, url) = listen().await;
        let config = NodeConfig::new(&data_dir);
        tokio::spawn(f4::node::run(config, listener, cancel.clone()));
        nodes.push((url, data_dir));
    }
    let http = f4::client::http_client(10_000).expect("client");
    for block in &blocks {
        let (url, _) = &nodes[block.header.block_index as usize];
        StorageClient::from_http(url, http.clone())
            .put_block(
                VOLUME,
                GENERATION,
                block.header.stripe,
                block.header.block_index,
                &block.path,
            )
            .await
            .expect("block stored");
    }
    let (listener, url) = listen().await;
    tokio::spawn(f4::rebuild::run(
        RebuilderConfig::default(),
        listener,
        cancel.clone(),
    ));
    Cell {
        _dir: dir,
        nodes,
        rebuilder: RebuilderClient::from_http(&url, http),
        geometry,
        blocks,
        cancel,
    }
}

impl Cell {
    fn stored_path(&self, node: usize, stripe: u64, block: u32) -> PathBuf {
        self.nodes[node]
            .1
            .join("blocks")
            .join(block_file_name(VOLUME, GENERATION, stripe, block))
    }

    fn original(&self, stripe: u64, block: u32) -> Vec<u8> {
        let written = self
            .blocks
            .iter()
            .find(|b| (b.header.stripe, b.header.block_index) == (stripe, block))
            .expect("encoded block");
        std::fs::read(&written.path).expect("original block")
    }

    /// Every node's URL, `None` for the blocks in `lost`.
    fn sources(&self, lost: &[u32]) -> Vec<Option<String>> {
        (0..14u32)
            .map(|b| (!lost.contains(&b)).then(|| self.nodes[b as usize].0.clone()))
            .collect()
    }

    fn request(&self, stripe: u64, lost: &[u32], targets: &[(u32, usize)]) -> RebuildRequest {
        RebuildRequest {
            volume: VOLUME,
            generation: GENERATION,
            geometry: self.geometry,
            stripe,
            sources: self.sources(lost),
            targets: targets
                .iter()
                .map(|(block, node)| RebuildTarget {
                    block: *block,
                    node: self.nodes[*node].0.clone(),
                })
                .collect(),
            bytes_per_second: 0,
        }
    }
}

fn remove(path: &Path) {
    std::fs::remove_file(path).expect("block file removed");
}

#[tokio::test]
async fn four_lost_blocks_come_back_byte_for_byte_in_place_and_on_a_new_node() {
    let cell = cell().await;
    assert_eq!(cell.geometry.layout().expect("layout").stripe_count(), 2);
    for stripe in 0..2 {
        // Two data blocks (the second stripe's block 9 is short) and two
        // parity blocks; block 0 goes to the spare node.
        let lost = [0, 9, 10, 13];
        for block in lost {
            remove(&cell.stored_path(block as usize, stripe, block));
        }
        let targets = [(0, 14), (9, 9), (10, 10), (13, 13)];
        let report = cell
            .rebuilder
            .rebuild(&cell.request(stripe, &lost, &targets))
            .await
            .expect("rebuilt");
        assert!(report.failed_sources.is_empty(), "{report:?}");
        assert_eq!(report.sources.len(), 10, "{report:?}");
        for (block, node) in targets {
            let rebuilt = std::fs::read(cell.stored_path(node, stripe, block)).expect("rebuilt");
            assert!(
                rebuilt == cell.original(stripe, block),
                "stripe {stripe} block {block} differs from the original"
            );
        }
        // The restored blocks serve as sources of the next rebuild.
        remove(&cell.stored_path(1, stripe, 1));
        let sources_now = {
            let mut request = cell.request(stripe, &[1, 0], &[(1, 1)]);
            request.sources[0] = Some(cell.nodes[14].0.clone());
            request
        };
        cell.rebuilder
            .rebuild(&sources_now)
            .await
            .expect("rebuilt from rebuilt blocks");
        assert!(
            std::fs::read(cell.stored_path(1, stripe, 1)).expect("block 1")
                == cell.original(stripe, 1)
        );
    }
}

#[tokio::test]
async fn a_corrupt_source_is_replaced_and_named() {
    let cell = cell().await;
    let corrupt = cell.stored_path(1, 0, 1);
    let mut bytes = std::fs::read(&corrupt).expect("read");
    bytes[200] ^= 0x40;
    std::fs::write(&corrupt, &bytes).expect("corrupt");
    remove(&cell.stored_path(2, 0, 2));
    let report = cell
        .rebuilder
        .rebuild(&cell.request(0, &[2], &[(2, 2)]))
        .await
        .expect("rebuilt around the corrupt source");
    assert!(
        report
            .failed_sources
            .iter()
            .any(|f| f.block == 1 && f.damaged),
        "{report:?}"
    );
    assert!(!report.sources.contains(&1), "{report:?}");
    assert!(std::fs::read(cell.stored_path(2, 0, 2)).expect("block 2") == cell.original(0, 2));
}

#[tokio::test]
async fn a_source_damaged_in_one_column_serves_the_others() {
    // Blocks of 86,666 bytes: two columns of a rebuild in 64 KiB steps.
    let cell = cell_of(2_599_980).await;
    assert_eq!(cell.geometry.block_size_bytes, 86_666);
    // Three blocks lost leave one spare source; block 3 is damaged in the
    // first column and block 4 in the second, so each column needs the
    // other's damaged block.
    let lost = [0, 1, 2];
    for block in lost {
        remove(&cell.stored_path(block as usize, 0, block));
    }
    for (block, at) in [(3u32, 100usize), (4, 70_000)] {
        let path = cell.stored_path(block as usize, 0, block);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[f4::format::BLOCK_HEADER_SIZE + at] ^= 0x40;
        std::fs::write(&path, &bytes).expect("corrupt");
    }
    let mut request = cell.request(0, &lost, &[(0, 0), (1, 1), (2, 2)]);
    // 64 KiB steps (the smallest a throttled rebuild takes).
    request.bytes_per_second = 512 * 65_536;
    let report = cell.rebuilder.rebuild(&request).await.expect("rebuilt");
    for block in [3, 4] {
        assert!(
            report
                .failed_sources
                .iter()
                .any(|f| f.block == block && f.damaged),
            "{report:?}"
        );
        assert!(report.sources.contains(&block), "{report:?}");
    }
    for block in lost {
        let rebuilt = std::fs::read(cell.stored_path(block as usize, 0, block)).expect("rebuilt");
        assert!(rebuilt == cell.original(0, block), "block {block} differs");
    }
}

#[tokio::test]
async fn too_few_survivors_are_refused_and_the_target_keeps_nothing() {
    let cell = cell().await;
    let lost = [0, 1, 2, 3, 4];
    let error = cell
        .rebuilder
        .rebuild(&cell.request(0, &lost, &[(0, 14)]))
        .await
        .expect_err("nine sources cannot decode");
    assert!(
        matches!(&error, ClientError::Status { status: 503, code, .. } if code == "too_few_blocks"),
        "{error}"
    );
    assert!(!cell.stored_path(14, 0, 0).exists());
    let blocks = std::fs::read_dir(cell.nodes[14].1.join("blocks")).expect("dir");
    assert_eq!(blocks.count(), 0, "no partial file is left");
}

#[tokio::test]
async fn malformed_rebuilds_are_refused() {
    let cell = cell().await;
    let mut short = cell.request(0, &[0], &[(0, 14)]);
    short.sources.pop();
    let mut unparsable = cell.request(0, &[0], &[(0, 14)]);
    unparsable.targets[0].node = "not a url".into();
    let cases = [
        // Twice the same target, none, one outside the stripe, five.
        cell.request(0, &[0], &[(0, 14), (0, 13)]),
        cell.request(0, &[0], &[]),
        cell.request(0, &[0], &[(14, 14)]),
        cell.request(
            0,
            &[0, 1, 2, 3, 4],
            &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)],
        ),
        // A stripe past the volume, a source missing, a bad node URL.
        cell.request(7, &[0], &[(0, 14)]),
        short,
        unparsable,
    ];
    for request in cases {
        let error = cell.rebuilder.rebuild(&request).await.expect_err("refused");
        assert!(
            matches!(&error, ClientError::Status { status: 400, .. }),
            "{request:?}: {error}"
        );
    }
    assert_eq!(
        std::fs::read_dir(cell.nodes[14].1.join("blocks"))
            .expect("dir")
            .count(),
        0
    );
}
