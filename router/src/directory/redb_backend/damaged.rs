//! The `damaged_needles` table of [`RedbDirectory`]: key `(volume, needle
//! key)`, value a [`DamagedNeedle`] in the version envelope.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{RedbDirectory, decode, encode, ensure_replica, get_volume, page_after};
use crate::api::id::BlobId;
use crate::directory::DirectoryError;
use crate::directory::types::DamagedNeedle;

pub(super) const DAMAGED_NEEDLES: TableDefinition<(u32, u64), &[u8]> =
    TableDefinition::new("damaged_needles");

const TABLE: &str = "damaged_needles";

fn get(txn: &WriteTransaction, id: u32, key: u64) -> Result<Option<DamagedNeedle>, DirectoryError> {
    let table = txn.open_table(DAMAGED_NEEDLES)?;
    let value = table.get((id, key))?;
    value.map(|v| decode(TABLE, v.value())).transpose()
}

fn put(txn: &WriteTransaction, needle: &DamagedNeedle) -> Result<(), DirectoryError> {
    txn.open_table(DAMAGED_NEEDLES)?
        .insert((needle.volume, needle.key), encode(needle).as_slice())?;
    Ok(())
}

fn blob_id(volume: u32, key: u64, cookie: Option<u32>) -> Option<String> {
    cookie.map(|cookie| {
        BlobId {
            volume,
            key,
            cookie,
        }
        .to_string()
    })
}

impl RedbDirectory {
    pub(super) fn report_damaged(
        &self,
        id: u32,
        key: u64,
        node: &str,
        cookie: Option<u32>,
        now_ms: u64,
    ) -> Result<DamagedNeedle, DirectoryError> {
        self.write(|txn| {
            ensure_replica(&get_volume(txn, id)?, node)?;
            let mut needle = get(txn, id, key)?.unwrap_or_else(|| DamagedNeedle {
                volume: id,
                key,
                cookie: None,
                blob_id: None,
                replicas: Vec::new(),
                lost: false,
                reported_ms: now_ms,
            });
            if needle.cookie.is_none() && cookie.is_some() {
                needle.cookie = cookie;
                needle.blob_id = blob_id(id, key, cookie);
            }
            if !needle.replicas.iter().any(|r| r == node) {
                needle.replicas.push(node.to_owned());
            }
            put(txn, &needle)?;
            Ok(needle)
        })
    }

    pub(super) fn list_damaged(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<DamagedNeedle>, DirectoryError> {
        self.read(|txn| page_after(&txn.open_table(DAMAGED_NEEDLES)?, TABLE, after, limit))
    }

    pub(super) fn resolve_damaged(
        &self,
        id: u32,
        key: u64,
        node: &str,
    ) -> Result<Option<DamagedNeedle>, DirectoryError> {
        self.write(|txn| {
            let Some(mut needle) = get(txn, id, key)? else {
                return Ok(None);
            };
            needle.replicas.retain(|r| r != node);
            if needle.replicas.is_empty() {
                txn.open_table(DAMAGED_NEEDLES)?.remove((id, key))?;
                return Ok(None);
            }
            put(txn, &needle)?;
            Ok(Some(needle))
        })
    }

    pub(super) fn mark_lost(&self, id: u32, key: u64) -> Result<DamagedNeedle, DirectoryError> {
        self.write(|txn| {
            let mut needle =
                get(txn, id, key)?.ok_or(DirectoryError::UnknownNeedle { volume: id, key })?;
            if !needle.lost {
                needle.lost = true;
                put(txn, &needle)?;
            }
            Ok(needle)
        })
    }
}
