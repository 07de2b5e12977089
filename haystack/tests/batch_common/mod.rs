//! Helpers shared by the read batch tests (`store_read_batch.rs`,
//! `store_cached_reads.rs`).

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use haystack::batch::{BatchAnswer, BatchRead};

/// Upper bound on any one test.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);

pub async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test finished in time");
}

pub fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn cookie_for(key: u64) -> u32 {
    0x9e37_79b9u32.wrapping_mul(key as u32 + 1)
}

pub fn read(volume: u32, key: u64, max_data_bytes: u32) -> BatchRead {
    BatchRead {
        volume,
        key,
        cookie: cookie_for(key),
        head: false,
        max_data_bytes,
    }
}

/// The `found` answer for `data`; a head entry's carries no data and a CRC of 0 (its data is
/// not read).
pub fn found(content_type: &str, data: &[u8], head: bool) -> BatchAnswer {
    BatchAnswer::Found {
        content_type: Bytes::copy_from_slice(content_type.as_bytes()),
        crc32: if head { 0 } else { crc32fast::hash(data) },
        len: data.len() as u64,
        data: if head {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(data)
        },
    }
}
