//! The replica a seal reads (`docs/ARCHITECTURE.md`, "Sealing"): one that
//! holds every needle the volume's other fresh replicas hold.
//!
//! Fresh replicas of a locked volume hold the same needles almost always:
//! an upload is acknowledged only once every replica has it. But an append
//! that a router never finished (it died between replicas) is on some
//! replicas only, and a replica that lost needles it had (a damaged index,
//! a disk that lied about a sync) still counts as fresh. Readers may be
//! served such a needle by the replicas that hold it, so a seal from a
//! replica that lacks it would drop a BLOB that reads back today.
//!
//! The replicas' index digests are compared first (one cheap call each).
//! Only when they differ are their indexes merged, page by page in key
//! order, to find which replica lacks which live needle; the first replica
//! that lacks none is the source. A key two replicas hold with different
//! sizes, or no replica holding every live needle, stops the attempt with
//! the keys named, and the volume stays hot.

use std::collections::VecDeque;

use haystack::api::{NeedleEntry, PAGE_ENTRIES_MAX, PageCursor};
use haystack::client::StoreClient;

use super::error::ApiError;
use crate::directory::NodeRecord;

/// Keys named in an error, at most, per replica.
const KEYS_NAMED_MAX: usize = 5;

/// What the merge found out about one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Live needles in its index.
    pub(crate) live: u64,
    /// Bytes of its live needles.
    pub(crate) live_bytes: u64,
    /// Live needles of another replica absent from its index.
    pub(crate) missing: u64,
    /// The first few of those.
    pub(crate) missing_keys: Vec<u64>,
}

/// Folds one key of the merge into the replicas' tallies: `present[i]` is
/// replica `i`'s entry for that key, if its index has one. A key that is
/// live on one replica is missing on every replica without an entry (one
/// deleted everywhere it is listed is not: a delete may have been compacted
/// away). Two entries of different sizes are an error.
fn fold(
    vid: u32,
    key: u64,
    present: &[Option<NeedleEntry>],
    tallies: &mut [Tally],
    names: &[&str],
) -> Result<(), ApiError> {
    let mut listed = present
        .iter()
        .zip(names)
        .filter_map(|(e, n)| Some((e.as_ref()?, n)));
    if let Some((first, first_name)) = listed.next()
        && let Some((other, other_name)) = listed.find(|(e, _)| e.size_bytes != first.size_bytes)
    {
        return Err(ApiError::Unavailable(format!(
            "needle {key:x} of volume {vid} has {} bytes on {first_name} but {} on \
             {other_name}; the volume stays hot",
            first.size_bytes, other.size_bytes
        )));
    }
    let live_somewhere = present.iter().flatten().any(|e| !e.deleted);
    for (entry, tally) in present.iter().zip(tallies.iter_mut()) {
        match entry {
            Some(e) if !e.deleted => {
                tally.live += 1;
                tally.live_bytes += e.size_bytes;
            }
            Some(_) => {}
            None if live_somewhere => {
                tally.missing += 1;
                if tally.missing_keys.len() < KEYS_NAMED_MAX {
                    tally.missing_keys.push(key);
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// One replica's index, read a page at a time.
struct Cursor {
    store: StoreClient,
    name: String,
    page: VecDeque<NeedleEntry>,
    pages: PageCursor<u64>,
}

impl Cursor {
    /// The next entry's key, reading the next page when this one is used up.
    async fn peek(&mut self, vid: u32) -> Result<Option<u64>, ApiError> {
        while self.page.is_empty()
            && let Some(after) = self.pages.next_page()
        {
            let page = self
                .store
                .needle_page(vid, after, PAGE_ENTRIES_MAX)
                .await
                .map_err(|e| {
                    ApiError::Unavailable(format!(
                        "reading the index of volume {vid} on {}: {e}",
                        self.name
                    ))
                })?;
            if !self.pages.advance(page.next_after) {
                return Err(ApiError::Unavailable(format!(
                    "the index listing of volume {vid} on {} went backwards",
                    self.name
                )));
            }
            self.page = page.entries.into();
        }
        Ok(self.page.front().map(|e| e.key))
    }

    /// The entry of `key`, if it is the next one.
    fn take(&mut self, key: u64) -> Option<NeedleEntry> {
        (self.page.front()?.key == key)
            .then(|| self.page.pop_front())
            .flatten()
    }
}

/// The replica of `candidates` (fresh, up, in order of preference) to seal
/// volume `vid` from: the first whose index holds every live needle of the
/// others. With one candidate, or equal index digests, the first.
pub(crate) async fn complete_source<'a>(
    vid: u32,
    candidates: &[(&'a NodeRecord, StoreClient)],
) -> Result<&'a NodeRecord, ApiError> {
    let Some(((first, _), rest)) = candidates.split_first() else {
        return Err(ApiError::Unavailable(format!(
            "no fresh replica of volume {vid} is up to seal from"
        )));
    };
    if rest.is_empty() {
        return Ok(first);
    }
    let digests =
        futures::future::join_all(candidates.iter().map(|(_, s)| s.inventory_digest(vid))).await;
    if let Some(Ok(ours)) = digests.first()
        && digests.iter().all(|d| d.as_ref().ok() == Some(ours))
    {
        return Ok(first);
    }
    tracing::warn!(
        volume = vid,
        "replica index digests differ; comparing them needle by needle"
    );
    let tallies = merge(vid, candidates).await?;
    for ((node, _), tally) in candidates.iter().zip(&tallies) {
        tracing::info!(volume = vid, replica = %node.id, live = tally.live,
            live_bytes = tally.live_bytes, missing = tally.missing, "replica compared");
    }
    if let Some(((node, _), _)) = candidates
        .iter()
        .zip(&tallies)
        .find(|(_, t)| t.missing == 0)
    {
        if node.id != first.id {
            tracing::warn!(volume = vid, source = %node.id, instead_of = %first.id,
                "sealing from a replica that holds needles the first lacks");
        }
        return Ok(node);
    }
    let lacking: Vec<String> = candidates
        .iter()
        .zip(&tallies)
        .map(|((node, _), t)| {
            let keys: Vec<String> = t.missing_keys.iter().map(|k| format!("{k:x}")).collect();
            format!("{} lacks {} ({})", node.id, t.missing, keys.join(", "))
        })
        .collect();
    Err(ApiError::Unavailable(format!(
        "no replica of volume {vid} holds every live needle of the others: {}; the volume \
         stays hot",
        lacking.join("; ")
    )))
}

/// Merges the candidates' indexes in key order into one tally each.
async fn merge(
    vid: u32,
    candidates: &[(&NodeRecord, StoreClient)],
) -> Result<Vec<Tally>, ApiError> {
    let mut cursors: Vec<Cursor> = candidates
        .iter()
        .map(|(node, store)| Cursor {
            store: store.clone(),
            name: node.id.clone(),
            page: VecDeque::new(),
            pages: PageCursor::default(),
        })
        .collect();
    let names: Vec<String> = cursors.iter().map(|c| c.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut tallies = vec![Tally::default(); cursors.len()];
    loop {
        let mut next = None;
        for cursor in &mut cursors {
            if let Some(key) = cursor.peek(vid).await? {
                next = Some(next.map_or(key, |n: u64| n.min(key)));
            }
        }
        let Some(key) = next else {
            return Ok(tallies);
        };
        let present: Vec<Option<NeedleEntry>> = cursors.iter_mut().map(|c| c.take(key)).collect();
        fold(vid, key, &present, &mut tallies, &names)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u64, size_bytes: u64, deleted: bool) -> Option<NeedleEntry> {
        Some(NeedleEntry {
            key,
            offset: 8 + key * 64,
            size_bytes,
            deleted,
        })
    }

    #[test]
    fn a_live_needle_absent_from_a_replica_counts_against_it_alone() {
        let names = ["a", "b", "c"];
        let mut tallies = vec![Tally::default(); 3];
        // Everywhere; on b and c only; deleted on a, live on b, gone from c
        // (a compaction); deleted where listed; on a only.
        fold(
            1,
            1,
            &[
                entry(1, 64, false),
                entry(1, 64, false),
                entry(1, 64, false),
            ],
            &mut tallies,
            &names,
        )
        .unwrap();
        fold(
            1,
            2,
            &[None, entry(2, 64, false), entry(2, 64, false)],
            &mut tallies,
            &names,
        )
        .unwrap();
        fold(
            1,
            3,
            &[entry(3, 64, true), entry(3, 64, false), None],
            &mut tallies,
            &names,
        )
        .unwrap();
        fold(
            1,
            4,
            &[entry(4, 64, true), None, entry(4, 64, true)],
            &mut tallies,
            &names,
        )
        .unwrap();
        fold(
            1,
            5,
            &[entry(5, 128, false), None, None],
            &mut tallies,
            &names,
        )
        .unwrap();
        let tally = |live, live_bytes, missing: Vec<u64>| Tally {
            live,
            live_bytes,
            missing: missing.len() as u64,
            missing_keys: missing,
        };
        assert_eq!(
            tallies,
            vec![
                tally(2, 192, vec![2]),
                tally(3, 192, vec![5]),
                tally(2, 128, vec![3, 5]),
            ]
        );
    }

    #[test]
    fn two_sizes_under_one_key_are_refused_and_few_keys_are_named() {
        let names = ["a", "b"];
        let mut tallies = vec![Tally::default(); 2];
        let err = fold(
            7,
            9,
            &[entry(9, 64, false), entry(9, 72, true)],
            &mut tallies,
            &names,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("needle 9 of volume 7 has 64 bytes on a but 72 on b"),
            "{err}"
        );
        for key in 0..20 {
            fold(7, key, &[None, entry(key, 64, false)], &mut tallies, &names).unwrap();
        }
        assert_eq!(tallies[0].missing, 20);
        assert_eq!(tallies[0].missing_keys, vec![0, 1, 2, 3, 4]);
    }
}
