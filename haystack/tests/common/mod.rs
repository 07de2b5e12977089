//! Helpers shared by the compaction test binaries: a `BTreeMap` model of a
//! volume's live needles, filled and checked against the real volume.

use std::collections::BTreeMap;

use haystack::{Error, Volume};

/// Live needles by key: cookie and data.
pub type Model = BTreeMap<u64, (u32, Vec<u8>)>;

/// The cookie of key `k` in these tests.
pub fn cookie(k: u64) -> u32 {
    k as u32 ^ 0xabcd
}

/// Appends keys `from..to` with sizes up to 3,000 bytes, recording each in `model`.
pub fn fill(v: &Volume, from: u64, to: u64, model: &mut Model) {
    for k in from..to {
        let data = vec![(k % 251) as u8; (k as usize * 37) % 3000];
        v.append_needle(k, cookie(k), "", &data).expect("append");
        model.insert(k, (cookie(k), data));
    }
}

/// Every key below `upto` reads as the model says (live bytes or `NotFound`),
/// and the live count matches.
pub fn check(v: &Volume, model: &Model, upto: u64) {
    for k in 1..upto {
        match model.get(&k) {
            Some((c, d)) => assert_eq!(&v.read_needle(k, *c).expect("live").data, d, "key {k}"),
            None => assert!(matches!(v.read_needle(k, cookie(k)), Err(Error::NotFound))),
        }
    }
    assert_eq!(v.status().needle_count, model.len() as u64);
}
